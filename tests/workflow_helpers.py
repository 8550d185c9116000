"""Data and helpers of the workflow tests (tests/workflow)."""

from __future__ import annotations

import os

DOMAINS = {
    "animals": ["the cat sat on the mat", "the dog ran in the park", "a bird sang in the tree",
                "the cat chased the bird", "the dog slept on the mat", "a cow ate the grass"],
    "cooking": ["boil the pasta in salted water", "chop the onion and fry it", "bake the bread "
                "in the oven", "stir the sauce and add salt", "fry the egg in butter",
                "season the soup with pepper"],
    "weather": ["rain falls from grey clouds", "the wind blows from the north", "snow covers "
                "the cold hills", "the sun shines on the hills", "clouds bring rain and wind",
                "fog hides the grey sea"],
}


def train_adapter(base_dir: str, data: str, out: str, **settings) -> str:
    from modelgit.adapters import TrainConfig, train

    options = {"rank": 4, "alpha": 8.0, "steps": 30, "lr": 2e-2, "batch_size": 8, "threads": 1,
               **settings}
    train(TrainConfig(base=base_dir, data=data, output=out, **options), progress=False)
    return out


def model_dir(repo) -> str:
    return os.path.join(repo.root, "model")
