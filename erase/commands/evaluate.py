"""`erase evaluate KIND ...`: evaluations, one module per kind (add yours to EVALUATORS)."""

from __future__ import annotations

import importlib

EVALUATORS: list[str] = [
    "erase.commands.evaluate_nudity",
    "erase.commands.evaluate_classifier",
    "erase.commands.evaluate_fid",
]


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate generated images or a model")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    for name in EVALUATORS:
        importlib.import_module(name).register(kinds)
