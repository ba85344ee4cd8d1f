import pytest

from td_bridge.params import (GENERATION_PARAMS, SEED_MAX, ParamError, generation_param, resolve_seed,
                              validate_generation)


def test_defaults_are_valid_and_complete():
    values = validate_generation({})
    assert set(values) == {p.name for p in GENERATION_PARAMS}
    for param in GENERATION_PARAMS:
        assert param.coerce(param.default) == param.default


@pytest.mark.parametrize(
    "name, given, expected",
    [
        ("steps", 30, 30),
        ("steps", 30.0, 30),
        ("steps", "30", 30),
        ("guidance", 7, 7.0),
        ("guidance", " 7.5", 7.5),
        ("width", 512, 512),
        ("seed", SEED_MAX, SEED_MAX),
        ("seed", -1, -1),
        ("prompt", "ünïcode ✓", "ünïcode ✓"),
    ],
)
def test_coercion(name, given, expected):
    value = generation_param(name).coerce(given)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "name, given, message",
    [
        ("steps", 0, r"out of range; allowed: int in \[1, 500\]"),
        ("steps", 30.5, "not a valid int"),
        ("steps", True, "not a valid int"),
        ("steps", "many", "not a valid int"),
        ("steps", None, "not a valid int"),
        ("guidance", float("nan"), "not a valid float"),
        ("guidance", float("inf"), "not a valid float"),
        ("guidance", -1, "out of range"),
        ("width", 1000 + 4, "multiple of 8"),
        ("width", 8, "out of range"),
        ("seed", SEED_MAX + 1, "out of range"),
        ("seed", -2, "out of range"),
        ("prompt", 5, "not a valid str"),
        ("prompt", "x" * 2001, "too long"),
        ("prompt", "a\x00b", "NUL"),
    ],
)
def test_bad_values_name_the_allowed_range(name, given, message):
    with pytest.raises(ParamError, match=message):
        generation_param(name).coerce(given)


def test_all_problems_reported_at_once():
    with pytest.raises(ParamError) as info:
        validate_generation({"steps": 0, "colour": "red", "width": 7})
    text = str(info.value)
    assert "steps" in text and "unknown parameter 'colour'" in text and "width" in text


def test_resolve_seed_draws_only_for_minus_one():
    assert resolve_seed({"seed": 5})["seed"] == 5
    drawn = {resolve_seed({"seed": -1})["seed"] for _ in range(5)}
    assert all(0 <= s <= SEED_MAX for s in drawn) and len(drawn) > 1


def test_touchdesigner_parameter_definitions_come_from_the_schema():
    import re

    from td_bridge.params import DISPLAY_PARAMS, td_name, td_parameter_specs

    specs = td_parameter_specs(GENERATION_PARAMS, "Generate") + td_parameter_specs(DISPLAY_PARAMS, "Depth")
    names = [s["name"] for s in specs]
    assert all(re.fullmatch(r"[A-Z][a-z0-9]*", n) for n in names) and len(set(names)) == len(names)
    by_name = {s["name"]: s for s in specs}
    assert by_name["Negativeprompt"]["style"] == "Str" and by_name["Seamless"]["style"] == "Toggle"
    assert by_name["Scheduler"]["style"] == "Menu" and by_name["Scheduler"]["menu"] == ["ddim", "dpm++", "euler", "lcm",
                                                                                     "tcd"]
    assert by_name["Steps"]["min"] == 1 and by_name["Steps"]["max"] == 500 and by_name["Steps"]["default"] == 50
    assert by_name["Meshrows"]["page"] == "Depth"
    with pytest.raises(ParamError):
        td_name("3d")
