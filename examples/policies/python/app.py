"""least-connections in Python: the eligible server with the fewest open connections per unit of weight
(active / weight); ties go to the one given the fewest connections per weight so far (total / weight). The
same decisions as the shipped Rust plugin plugins/least-connections. No arguments.

Built into a WebAssembly component by componentize-py against vipd's WIT (see build.sh)."""

from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.selection import SelectError
from wit_world.imports import types


def eligible(c: types.Candidate) -> bool:
    return c.state == types.ServerState.UP and c.weight > 0


def pick(candidates: List[types.Candidate]):
    """The position of the least loaded eligible candidate, or None."""
    best = None
    for i, c in enumerate(candidates):
        if not eligible(c):
            continue
        if best is None:
            best = i
            continue
        b = candidates[best]
        lc, lb = c.active * b.weight, b.active * c.weight
        if lc < lb or (lc == lb and c.total * b.weight < b.total * c.weight):
            best = i
    return best


class Selection(exports.Selection):
    def init(self, args: List[Tuple[str, str]]) -> None:
        for key, _ in args:
            raise Err(types.InitError_UnknownArgument(key))

    def select(self, conn: types.Connection, candidates: List[types.Candidate]) -> int:
        i = pick(candidates)
        if i is None:
            raise Err(SelectError.NO_SERVER)
        return candidates[i].index

    def connection_closed(self, conn: types.Connection, real_id: int) -> None:
        pass

    def connection_ditched(self, conn: types.Connection, real_id: int) -> None:
        pass

    def server_state_changed(self, real_id: int, state: types.ServerState) -> None:
        pass
