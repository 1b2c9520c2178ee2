"""The README, the model card and docs/ name only things that exist: repository paths, `make` targets,
chart values set with --set, verifier arguments, and the files and sections their links point to."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from harness.paths import CHART, REPO_ROOT
from k8s import verify

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "MODEL_CARD.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Top-level entries a path in the docs may start with; generated ones (.bentoml/, .tools/) are left out.
TOP_LEVEL = (
    r"(?:charts|k8s|scripts|requirements|docs|bento|training|tests|bench|wdbc|harness|docker|\.github|\.ci)"
)
# Directories a run creates (gitignored): named in the docs as where output goes, absent from a clone.
GENERATED = ("bench/results", "reports/", "registry/", "data/")
PATH = re.compile(rf"(?<![\w./$<-]){TOP_LEVEL}/[\w./*-]*[\w*]")
FILES = re.compile(r"(?<![\w./-])(?:Makefile|pyproject\.toml|bentofile\.yaml)\b")


def code(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands and paths are written."""
    fenced = re.findall(r"```\w*\n(.*?)```", text, flags=re.DOTALL)
    without_fenced = re.sub(r"```\w*\n.*?```", "", text, flags=re.DOTALL)
    return fenced + re.findall(r"`([^`\n]+)`", without_fenced)


def command_lines(text: str) -> list[list[str]]:
    """Every command in the docs' code, split like a shell would, continuations joined."""
    lines = []
    for snippet in code(text):
        for line in snippet.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                try:
                    lines.append(shlex.split(line, comments=True))
                except ValueError:  # an excerpt, not a command (e.g. a quoted message)
                    continue
    return lines


@pytest.fixture(scope="module", params=DOCS, ids=lambda path: path.name)
def doc(request) -> tuple[Path, str]:
    return request.param, request.param.read_text()


def test_repository_paths_exist(doc):
    path, text = doc
    named = {match for snippet in code(text) for match in PATH.findall(snippet)}
    links = {link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link}
    for name in sorted(name for name in named if not name.startswith(GENERATED)):
        target = REPO_ROOT / name
        assert list(target.parent.glob(target.name)), f"{path.name} names {name}, which does not exist"
    for link in sorted(links):
        assert (path.parent / link).exists(), f"{path.name} links to {link}, which does not exist"
    for name in {match for snippet in code(text) for match in FILES.findall(snippet)}:
        assert (REPO_ROOT / name).is_file(), name


def test_make_targets_exist(doc):
    path, text = doc
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][\w-]*):", makefile))
    used = {args[1] for args in command_lines(text) if args[:1] == ["make"] and len(args) > 1}
    used |= {m for snippet in code(text) for m in re.findall(r"\bmake ([a-z][\w-]*)", snippet)}
    for target in sorted(used):
        assert target in targets, f"{path.name}: make {target} is not a Makefile target"


def test_set_values_exist_in_the_chart(doc):
    path, text = doc
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = [
        args[i + 1].split("=")[0]
        for args in command_lines(text)
        for i, arg in enumerate(args[:-1])
        if arg == "--set"
    ]
    keys += re.findall(r"--set '?([\w.\[\]]+)=", text)
    for key in keys:
        node = values
        for part in key.split("."):
            name, index = re.fullmatch(r"(\w+)(\[\d+\])?", part).groups()
            assert isinstance(node, dict) and name in node, f"{path.name}: --set {key} is not in values.yaml"
            node = node[name]
            if index:  # a list item: values.yaml's default list is empty, so its fields cannot be checked
                assert isinstance(node, list), f"{path.name}: --set {key}: {name} is not a list"
                break


def test_verifier_invocations_parse(doc):
    _, text = doc
    for args in command_lines(text):
        if args[:3] == [".venv/bin/python", "-m", "k8s.verify"]:
            parsed = verify.parse_args(args[3:])
            assert parsed.release and parsed.namespace


def test_links_to_sections_resolve(doc):
    path, text = doc
    for target, anchor in re.findall(r"\]\(([\w./-]*?)#([\w-]+)\)", text):
        linked = (path.parent / target).read_text() if target else text
        headings = re.findall(r"(?m)^#+ (.+)$", linked)
        slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
        assert anchor in slugs, f"{path.name}: link to #{anchor} in {target or path.name} has no heading"


def test_the_checks_can_fail(tmp_path):
    """The path and target patterns find what a doc names (guards against a pattern matching nothing)."""
    sample = "Run `make nosuchtarget` and read `k8s/nosuchfile.yaml`.\n```bash\nmake tools\n```\n"
    assert {m for s in code(sample) for m in PATH.findall(s)} == {"k8s/nosuchfile.yaml"}
    assert {args[1] for args in command_lines(sample) if args[:1] == ["make"]} == {"nosuchtarget", "tools"}
