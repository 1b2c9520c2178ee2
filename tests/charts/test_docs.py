"""The chart's README: a hand-written head, and parameter tables generated from values.yaml.

Staleness (README.md or values.schema.json behind values.yaml) is caught where every generated file
is: tests/k8s/test_manifests.py regenerates them all into a temporary directory with
scripts/render-manifests.sh and compares.
"""

from __future__ import annotations

import re

import yaml

PARAM = re.compile(r"^ *## @(?:param|extra) (\S+)", re.MULTILINE)


def leaf_paths(values: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths |= {path} | leaf_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_every_value_is_in_the_parameter_tables(chart):
    readme = (chart / "README.md").read_text()
    tables = readme.split("\n## Parameters\n", 1)[1]
    documented = set(PARAM.findall((chart / "values.yaml").read_text()))
    # readme-generator itself refuses a value without a `## @param`; here: each one reached the table.
    missing = [path for path in sorted(documented) if f"| `{path}` " not in tables]
    assert not missing, f"not in README.md's tables (run bash scripts/render-manifests.sh): {missing}"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    top_level = set(values)
    assert top_level <= documented <= leaf_paths(values)


def test_helm_show_readme_prints_it(helm_run, chart):
    result = helm_run("show", "readme", chart)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (chart / "README.md").read_text().strip()
