"""The one settings schema: every settings field has one choice, the values refuse what it does not
offer, and the browser's preview reads the schema instead of a list of its own."""

from __future__ import annotations

from dataclasses import fields

import pytest
from conftest import REPO

from optim import SETTINGS_SCHEMA, SETTINGS_TYPES, QwenFitError, schema_json


@pytest.mark.parametrize("group", SETTINGS_SCHEMA, ids=lambda g: g.loader_input)
def test_every_settings_field_has_exactly_one_choice(group):
    settings_type = SETTINGS_TYPES[group.loader_input]
    assert [f.name for f in fields(settings_type)] == [c.field for c in group.choices]
    for choice in group.choices:
        assert choice.default in choice.options
        assert getattr(settings_type(), choice.field) == choice.default  # one default, not two


@pytest.mark.parametrize("group", SETTINGS_SCHEMA, ids=lambda g: g.loader_input)
def test_values_refuse_what_the_schema_does_not_offer(group):
    settings_type = SETTINGS_TYPES[group.loader_input]
    for choice in group.choices:
        with pytest.raises(QwenFitError, match=f"{choice.label}='nonsense' is not supported; pick one of"):
            settings_type(**{choice.field: "nonsense"})


def test_query_names_are_unique_and_the_json_carries_them():
    queries = [c.query for g in SETTINGS_SCHEMA for c in g.choices]
    assert len(queries) == len(set(queries))
    assert [c["query"] for g in schema_json() for c in g["choices"]] == queries


def test_the_browser_reads_settings_from_the_schema():
    """Regression: web/qwenfit/plan_preview.js once named the settings itself and left out gpus and
    multi_gpu; now no settings field or query name is spelled there."""
    script = (REPO / "web" / "qwenfit" / "plan_preview.js").read_text()
    assert "/qwenfit/settings_schema" in script
    for group in SETTINGS_SCHEMA:
        for choice in group.choices:
            for name in {choice.query, choice.field} - {"vae", "text_encoder", "transformer"}:
                assert f'"{name}"' not in script, f"{name} is spelled in plan_preview.js: read it from the schema"
