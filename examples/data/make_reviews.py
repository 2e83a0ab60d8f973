"""Writes examples/data/reviews/{train,test}.csv: a small made-up review task (docs/data.md).

The header is `id,review,sentiment`, which the column rules do not guess, so the example shows
the column settings: `text_column=review label_column=sentiment eval_split=test`. Deterministic:
running it again rewrites the same files.
"""

from __future__ import annotations

import csv
import os
import random

GOOD = ["warm", "sharp", "moving", "funny", "clever", "gripping", "lovely", "tender"]
BAD = ["dull", "flat", "clumsy", "tedious", "shallow", "noisy", "stale", "limp"]
THINGS = ["script", "cast", "ending", "soundtrack", "pacing", "dialogue", "camera work", "story"]
FRAMES = ["the {thing} was {word}", "a {word} {thing}, all in all", "I found the {thing} {word}",
          "{word} from start to finish, {thing} included", "what a {word} {thing}"]


def rows(rng: random.Random, n: int, start: int) -> list[tuple[int, str, str]]:
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(GOOD if label == "positive" else BAD)
        text = rng.choice(FRAMES).format(thing=rng.choice(THINGS), word=word)
        out.append((start + i, text[0].upper() + text[1:] + ".", label))
    return out


def main() -> None:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reviews")
    os.makedirs(here, exist_ok=True)
    rng = random.Random(13)
    for name, n, start in (("train", 48, 0), ("test", 16, 1000)):
        with open(os.path.join(here, f"{name}.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "review", "sentiment"])
            writer.writerows(rows(rng, n, start))


if __name__ == "__main__":
    main()
