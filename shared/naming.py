"""Topic-safe names: one rule turning a user's device name into an MQTT topic segment.

The same slug is used wherever a name must be a single, portable token: MQTT topic
levels (`hwsched/socket/<slug>/state`) and Home Assistant unique ids / object ids.
Two device names that give the same slug would share topics, so the configuration
refuses them (see `shared.config`).
"""

from __future__ import annotations

import re
import unicodedata

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """The topic-safe form of a name: lowercase ASCII letters, digits and single `_`.

    Drops accents ("é" -> "e"), lowercases, turns every run of characters outside
    [a-z0-9] (spaces, punctuation, other letters) into one `_`, and strips `_` from both
    ends: "Kitchen Boiler" -> "kitchen_boiler", "E-bike (shed)" -> "e_bike_shed",
    "Café" -> "cafe".

    Raises ValueError when nothing is left (e.g. "!!!" or "ß").
    """
    decomposed = unicodedata.normalize("NFKD", name)
    unaccented = "".join(c for c in decomposed if not unicodedata.combining(c))
    slug = _NOT_SLUG.sub("_", unaccented.lower()).strip("_")
    if not slug:
        raise ValueError(f"{name!r} has no letters or digits to make a topic name from")
    return slug
