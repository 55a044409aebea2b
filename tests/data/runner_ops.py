"""Operators for the runner tests (a module of its own so spawn workers can import them)."""

import os
import time

from osora.data.operator import Operator, OperatorError


class Square(Operator):
    """score_motion rows: motion = n², with behaviour chosen by the input id's prefix:
    "none-" → no output, "bad-" → OperatorError, "boom-" → a bug, "slow-" → sleeps past any
    limit, "die-" → the worker process dies."""

    output_table = "score_motion"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def process(self, row):
        time.sleep(self.delay_s)
        name = row["id"]
        if name.startswith("none-"):
            return []
        if name.startswith("bad-"):
            raise OperatorError(f"{name} is bad on purpose")
        if name.startswith("boom-"):
            raise ZeroDivisionError("division by zero")
        if name.startswith("slow-"):
            time.sleep(60)
        if name.startswith("die-"):
            os._exit(13)
        return [{"id": name, "motion": float(row["n"]) ** 2}]


class Pieces(Operator):
    """clips-like fan-out: input n gives n output rows (like one video giving n clips)."""

    output_table = "score_motion"

    def process(self, row):
        return [{"id": f"{row['id']}-{i}", "motion": float(i)} for i in range(row["n"])]
