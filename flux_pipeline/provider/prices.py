"""The price table as shipped (`data/prices.json`: unit, date, source, default and per-model
rates) and the estimate of one request from it."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any


@functools.cache
def price_table() -> dict[str, Any]:
    """The price table as shipped: unit, date, source, default and per-model rates."""
    text = resources.files("flux_pipeline.provider").joinpath("data/prices.json").read_text("utf-8")
    table: dict[str, Any] = json.loads(text)
    return table


def estimate(
    model: str, width: int, height: int, images: int, prices: Mapping[str, float] | None = None
) -> float:
    """A request's expected cost: the user's price per image for the model if given
    (`prices`: `--price`, `[tool.flux-pipeline.prices]`), else the price table's estimate, per
    image or per started megapixel."""
    if prices and model in prices:
        return float(prices[model]) * images
    table = price_table()
    rate = table["models"].get(model, table["default"])
    if "per_image" in rate:
        each = float(rate["per_image"])
    else:
        each = float(rate["per_megapixel"]) * max(1, math.ceil(width * height / 1_000_000))
    return each * images
