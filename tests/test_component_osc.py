"""td_bridge.component_osc: what the component's OSC In DAT accepts, checked by the schema."""

import pytest

from td_bridge.component_osc import ACTIONS, ROUTED_PARAMS, OscRoute, route
from td_bridge.params import ParamError


@pytest.mark.parametrize("address, args, expected", [
    ("/depthfusion/ipd", [0.07], OscRoute("set", "ipd", 0.07)),
    ("/depthfusion/mesh_rows", [128.0], OscRoute("set", "mesh_rows", 128)),
    ("/depthfusion/seamless", ["off"], OscRoute("set", "seamless", False)),
    ("/depthfusion/edges", ["fade"], OscRoute("set", "edges", "fade")),
    ("/depthfusion/seed", [2**31 - 1], OscRoute("set", "seed", 2**31 - 1)),
    ("/depthfusion/generate", [], OscRoute("action", "generate")),
    ("/depthfusion/generate", ["a misty forest ✓"], OscRoute("action", "generate", "a misty forest ✓")),
    ("/depthfusion/recall", [" opening "], OscRoute("action", "recall", "opening")),
    ("/depthfusion/cancel", [], OscRoute("action", "cancel")),
    ("/depthfusion/connect", [], OscRoute("action", "connect")),
])
def test_messages_route_to_checked_values(address, args, expected):
    assert route(address, args) == expected


@pytest.mark.parametrize("address, args, message", [
    ("/depthfusion/ipd", [2.0], "ipd: 2.0 is out of range"),
    ("/depthfusion/ipd", [float("nan")], "not a valid float"),
    ("/depthfusion/ipd", [], "takes 1 argument"),
    ("/depthfusion/ipd", [0.1, 0.2], "takes 1 argument"),
    ("/depthfusion/mapping", ["cubic"], "is not a choice"),
    ("/depthfusion/steps", [True], "not a valid int"),
    ("/depthfusion/generate", ["x" * 2001], "too long"),
    ("/depthfusion/generate", ["a\x00b"], "NUL"),
    ("/depthfusion/generate", ["a", "b"], "takes 0 to 1 argument"),
    ("/depthfusion/recall", [""], "frame id or cue name"),
    ("/depthfusion/recall", [7], "frame id or cue name"),
    ("/depthfusion/recall", ["x" * 201], "frame id or cue name"),
    ("/depthfusion/cancel", ["job-1"], "takes 0 argument"),
    ("/depthfusion/", [], "unknown address"),
    ("/depthfusion/Ipd", [0.1], "unknown address"),
    ("/DepthFusion/ipd", [0.1], "listens under /depthfusion/"),
    (None, [], "listens under"),
    (b"/depthfusion/ipd", [0.1], "listens under"),
])
def test_bad_messages_are_refused_with_a_reason(address, args, message):
    with pytest.raises(ParamError, match=message):
        route(address, args)


def test_every_parameter_and_action_has_one_address():
    names = [p.name for p in ROUTED_PARAMS] + list(ACTIONS)
    assert len(names) == len(set(names))
