"""What a job costs in credits, from an operator's price table (BFL's ``cost`` field).

BFL prices a FLUX.2 image as its first megapixel, plus each further output megapixel,
plus each input megapixel (1 credit = $0.01). A host that bills its users writes its own
prices in a JSON file (``--price-table``); without one everything costs 0, as a
self-hosted server should say. The table maps an endpoint name (or ``*`` for the rest) to
``{"first_mp": credits, "extra_mp": credits, "input_mp": credits}``; absent keys are 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fluxserve.domain import GenerationRequest
from fluxserve.errors import ConfigurationError

PRICE_KEYS = ("first_mp", "extra_mp", "input_mp")


@dataclass(frozen=True)
class Price:
    first_mp: float = 0.0
    extra_mp: float = 0.0
    input_mp: float = 0.0

    def cost(self, output_mp: float, input_mp: float) -> float:
        return self.first_mp + max(0.0, output_mp - 1.0) * self.extra_mp + input_mp * self.input_mp


class PriceTable:
    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self.prices = dict(prices or {})

    @classmethod
    def load(cls, path: Path | None) -> PriceTable:
        """The table in ``path`` (None: everything free); ConfigurationError when unreadable."""
        if path is None:
            return cls()
        try:
            raw = json.loads(Path(path).read_text())
            if not isinstance(raw, dict):
                raise ValueError("the file must hold one JSON object")
            prices = {}
            for endpoint, entry in raw.items():
                unknown = set(entry) - set(PRICE_KEYS)
                if unknown:
                    raise ValueError(f"{endpoint}: unknown keys {sorted(unknown)}")
                prices[endpoint] = Price(**{k: float(entry[k]) for k in entry})
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"--price-table {path}: {exc}. It is a JSON object mapping an endpoint (or "
                '"*") to {"first_mp": credits, "extra_mp": credits, "input_mp": credits}.'
            ) from None
        return cls(prices)

    def cost(self, request: GenerationRequest) -> float:
        """Credits for ``request``: each of its images priced by its endpoint's entry."""
        price = self.prices.get(request.endpoint) or self.prices.get("*") or Price()
        output_mp = request.width * request.height / 1e6
        return round(price.cost(output_mp, request.input_megapixels) * request.num_images, 4)
