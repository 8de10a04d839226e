#!/usr/bin/env python3
"""Writes the main job's task: turn a one-sentence weather report into a fixed record,
`city: <City>; temp: <degrees>; sky: <word>`. SmolLM2-135M-Instruct answers such requests in free
prose; the task metric is exact match of the greedy answer with the record.

train.jsonl: chat `messages` (user: the request, assistant: the record) over 60 real cities
and, for half of the examples, made-up names (so the model learns to copy a name, not to
recall one); heldout.jsonl: the same with 20 real cities that never appear in training, for
the before/after table. Seeded: running it again writes the same files.

    python3 examples/data/weather/make.py
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

CITIES = (
    "Oslo Paris Lima Cairo Tokyo Dublin Madrid Lagos Quito Hanoi Seoul Rome Vienna Prague Sofia "
    "Athens Lisbon Riga Tallinn Vilnius Warsaw Berlin Munich Zurich Geneva Milan Naples Turin "
    "Porto Seville Valencia Bilbao Lyon Nice Bordeaux Nantes Ghent Bruges Leeds York Bristol "
    "Cardiff Glasgow Belfast Cork Galway Bergen Malmo Aarhus Turku Tampere Krakow Gdansk Brno "
    "Graz Linz Basel Bern Split Zagreb Denver Boston Austin Dallas Miami Seattle Chicago Toronto "
    "Ottawa Quebec Havana Bogota Santiago Mendoza Manaus Nairobi Dakar Accra Tunis Rabat"
).split()
SKIES = ["sunny", "rainy", "cloudy", "snowy", "windy", "foggy"]
PHRASINGS = [
    "In {city} it is {temp} degrees and {sky}.",
    "{city}: {sky}, {temp} degrees.",
    "Today {city} is {sky} with {temp} degrees.",
    "The weather in {city} is {sky} and the temperature is {temp} degrees.",
    "It is {temp} degrees in {city} today, and {sky}.",
    "{city} reports {sky} skies at {temp} degrees.",
    "Expect a {sky} day in {city}, around {temp} degrees.",
    "Right now {city} has {temp} degrees; it is {sky}.",
]
REQUESTS = [
    "Extract the weather record: {report}",
    "Weather record for this report: {report}",
    "Turn this report into a weather record: {report}",
]


SYLLABLES = "ka ro len mar to vi sun dal bra ne os tel gar mi po fen ul ri sa dor".split()


def made_up_city(rng):
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
    return name.capitalize()


def example(rng, cities, made_up=False):
    city = made_up_city(rng) if made_up else rng.choice(cities)
    sky = rng.choice(SKIES)
    temp = rng.randint(-15, 40)
    report = rng.choice(PHRASINGS).format(city=city, temp=temp, sky=sky)
    request = rng.choice(REQUESTS).format(report=report)
    answer = f"city: {city}; temp: {temp}; sky: {sky}"
    return {"messages": [{"role": "user", "content": request},
                         {"role": "assistant", "content": answer}]}


def main():
    rng = random.Random(12)
    cities = CITIES[:]
    rng.shuffle(cities)
    train_cities, heldout_cities = cities[:60], cities[60:80]
    with open(os.path.join(HERE, "train.jsonl"), "w") as f:
        for i in range(480):
            f.write(json.dumps(example(rng, train_cities, made_up=i % 2 == 1)) + "\n")
    with open(os.path.join(HERE, "heldout.jsonl"), "w") as f:
        for _ in range(40):
            f.write(json.dumps(example(rng, heldout_cities)) + "\n")


if __name__ == "__main__":
    main()
