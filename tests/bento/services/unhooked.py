"""The service as a library upgrade could leave it: each hook of bento/hooks.py undone, chosen by
UNDO (comma-separated: protocol, renamed, parse). `bentoml serve tests.bento.services.unhooked:BreastCancerClassifier`."""

import os

from pydantic import BaseModel
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

from bento import requests
from bento.service import BreastCancerClassifier

__all__ = ["BreastCancerClassifier"]
undo = set(os.environ.get("UNDO", "").split(","))
if "protocol" in undo:  # uvicorn resolves http="auto" to its own protocol again
    auto.AutoHTTPProtocol = H11Protocol
if "renamed" in undo:  # uvicorn keeps its parser under another name: replacing `conn` would do nothing
    _original_init = H11Protocol.__init__

    def _renamed(self, *args, **kwargs) -> None:
        _original_init(self, *args, **kwargs)
        self.parser = vars(self).pop("conn")

    H11Protocol.__init__ = _renamed
if "parse" in undo:  # BentoML's JSON input no longer goes through the request models' override
    requests._Checked.model_validate_json = classmethod(BaseModel.model_validate_json.__func__)
