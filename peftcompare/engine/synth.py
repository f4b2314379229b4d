"""Deterministic text written for peftcompare's offline lesson: movie reviews with clear sentiment cues,
chat dialogues with one-line summaries, long reviews, #Person#-style dialogues and small news articles.

Everything here is built from hand-written word lists and templates by a seeded `Rng`, so the same seed
gives the same text on every machine and Python version (every draw goes through `Rng`, built on
`random.Random.random()`, the one method whose sequence Python guarantees across versions). The bundled sample files
(`scripts/make_samples.py`) and the pretraining text of `builtin:tiny-t5` (`peftcompare/pretrain.py`) both
come from here, through one rule that keeps them honest: validation items are generated first, and no
training or pretraining item may equal one of them or be a near duplicate of one (word-set Jaccard
similarity >= NEAR_DUPLICATE, see `words`), checked by `disjoint` and by tests/test_offline_lesson.py.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass

NEAR_DUPLICATE = 0.7  # word-set Jaccard similarity at or above which two texts count as near duplicates
# streams of one generator: each split draws from its own seed, so adding items to one never shifts another
SEEDS = {"validation": 1, "train": 2, "pretrain": 3}

# -- words ----------------------------------------------------------------------------------------------
POS_ADJ = ["superb", "gripping", "wonderful", "brilliant", "moving", "charming", "clever", "delightful",
           "beautiful", "stunning", "warm", "funny", "sharp", "inventive", "tender", "thrilling", "rich",
           "graceful", "witty", "compelling", "memorable", "touching", "lively", "gorgeous", "fresh", "powerful",
           "elegant", "satisfying", "heartfelt", "engaging", "smart", "vivid", "masterful", "exciting", "bold",
           "joyful", "haunting", "terrific", "excellent", "lovely", "fantastic", "marvellous", "sparkling",
           "absorbing", "confident", "honest"]
NEG_ADJ = ["dull", "tedious", "clumsy", "flat", "lifeless", "boring", "predictable", "muddled", "shallow", "bland",
           "awkward", "tiresome", "forgettable", "sloppy", "hollow", "stale", "lazy", "dreary", "messy", "pointless",
           "cheap", "stilted", "confusing", "overlong", "limp", "grating", "silly", "sluggish", "wooden",
           "listless", "plodding", "trite", "incoherent", "joyless", "mediocre", "dreadful", "painful",
           "uninspired", "murky", "cluttered", "terrible", "awful", "weak", "clichéd", "annoying", "empty"]
INTENSIFIERS = ["very", "truly", "remarkably", "genuinely", "utterly", "quite", "consistently", "surprisingly",
                "thoroughly", "really", "simply", "wildly"]
# (noun phrase, plural)
ASPECTS = [("the acting", False), ("the script", False), ("the plot", False), ("the dialogue", False),
           ("the pacing", False), ("the score", False), ("the soundtrack", False), ("the camera work", False),
           ("the ending", False), ("the cast", False), ("the direction", False), ("the story", False),
           ("the characters", True), ("the editing", False), ("the special effects", True),
           ("the lead performance", False), ("the jokes", True), ("the costumes", True), ("the set design", False),
           ("the final act", False), ("the opening scene", False), ("the music", False), ("the villain", False),
           ("the love story", False), ("the battle scenes", True), ("the supporting cast", False),
           ("the screenplay", False), ("the animation", False), ("the premise", False), ("the twist", False)]
GENRES = ["film", "movie", "comedy", "thriller", "drama", "documentary", "western", "musical", "romance", "sequel",
          "horror film", "cartoon", "biopic", "war film", "mystery", "adventure", "crime story", "family film",
          "satire", "fantasy", "period piece", "road movie", "space opera", "love story", "spy thriller"]
PEOPLE = ["the director", "the lead actress", "the young star", "the veteran cast", "the screenwriter",
          "the lead actor", "the whole cast", "the composer", "the first-time director", "the child actors",
          "the villain", "the comic duo"]
POS_VP = ["handles every scene with confidence", "brings real warmth to the story", "keeps the tension high",
          "finds the humor in small moments", "makes every line count", "gives a performance full of life",
          "never puts a foot wrong", "holds the film together", "earns every laugh", "lights up the screen",
          "tells the story with great care", "keeps us guessing until the end"]
NEG_VP = ["never finds the right tone", "sleepwalks through every scene", "loses the thread halfway",
          "drowns every scene in noise", "wastes a good premise", "cannot hold the film together",
          "misses every emotional beat", "turns every twist into a shrug", "makes every joke fall flat",
          "lets the story fall apart", "stretches a thin idea far too long", "gives us no reason to care"]
POS_EFFECT = ["left me smiling", "had the audience cheering", "kept me on the edge of my seat",
              "moved me to tears", "made the evening fly by", "stayed with me for days", "had me laughing out loud",
              "made me want to see it again"]
NEG_EFFECT = ["left me bored", "had people walking out", "put me to sleep", "made me check my watch",
              "left me cold", "felt twice as long as it was", "had me sighing in my seat",
              "made me want my money back"]
POS_VERDICT = ["worth every minute", "a must-see", "a real treat", "one of the best films of the year",
               "a joy from start to finish", "highly recommended", "a small gem", "a winner"]
NEG_VERDICT = ["a waste of time", "best avoided", "a chore to sit through", "one of the worst films of the year",
               "a mess from start to finish", "not recommended", "a big letdown", "a total misfire"]
POS_NOUN = ["a triumph", "a delight", "a pleasure", "a treat", "a gem", "a marvel"]
NEG_NOUN = ["a disaster", "a bore", "a slog", "a failure", "a mess", "a chore"]


class Rng:
    """random.Random's seeded stream with choice/randrange/sample built on random() alone: Python only
    promises that random() gives the same sequence for a seed in every version, not the other methods."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def random(self) -> float:
        return self._r.random()

    def randrange(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def choice(self, seq):
        return seq[self.randrange(len(seq))]

    def sample(self, seq, k: int) -> list:
        pool = list(seq)
        return [pool.pop(self.randrange(len(pool))) for _ in range(k)]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative
    sentences: tuple[str, ...] = ()  # a long review's generated sentences (its closing verdict line aside)

    def units(self) -> list[str]:
        return [self.text, *self.sentences]


def review(rng: Rng, label: int | None = None) -> Review:
    """One SST-2-style sentence (lowercase, punctuation split off): its sentiment is stated by its words; a
    few turn on 'but' (the last clause decides) or on 'not'."""
    if label is None:
        label = rng.randrange(2)
    pos = label == 1
    adj, opp = (POS_ADJ, NEG_ADJ) if pos else (NEG_ADJ, POS_ADJ)
    vp, eff = (POS_VP, POS_EFFECT) if pos else (NEG_VP, NEG_EFFECT)
    verdict, noun = (POS_VERDICT, POS_NOUN) if pos else (NEG_VERDICT, NEG_NOUN)

    def two(pool):
        a = rng.choice(pool)
        b = rng.choice([w for w in pool if w != a])
        return a, b

    def asp():
        np_, plural = rng.choice(ASPECTS)
        return np_, "are" if plural else "is"

    def inten():
        return rng.choice(INTENSIFIERS) + " " if rng.random() < 0.5 else ""

    (n1, v1), (n2, v2) = asp(), asp()
    while n2 == n1:
        n2, v2 = asp()
    a1, a2 = two(adj)
    g, who = rng.choice(GENRES), rng.choice(PEOPLE)
    k = rng.randrange(16)
    if k == 0:
        s = f"{n1} {v1} {inten()}{a1} and {n2} {v2} {inten()}{a2} ."
    elif k == 1:
        s = f"{_a(a1)} , {a2} {g} that {rng.choice(eff)} ."
    elif k == 2:
        s = f"{who} {rng.choice(vp)} , and {n1} {v1} {inten()}{a1} ."
    elif k == 3:
        s = f"this {g} {rng.choice(eff)} ; {rng.choice(verdict)} ."
    elif k == 4:
        s = f"{n1} {v1} {inten()}{a1} , {n2} {v2} {a2} , and the whole thing is {rng.choice(verdict)} ."
    elif k == 5:
        s = f"{rng.choice(verdict)} : {n1} {v1} {a1} and {who} {rng.choice(vp)} ."
    elif k == 6:
        s = f"from start to finish , {n1} {v1} {inten()}{a1} , and {n2} {v2} just as {a2} ."
    elif k == 7:
        s = f"i found {n1} {a1} and {n2} {a2} ; {rng.choice(verdict)} ."
    elif k == 8:
        s = f"with {a1} {n1.split(' ', 1)[1]} and {a2} {n2.split(' ', 1)[1]} , this {g} is {rng.choice(noun)} ."
    elif k == 9:
        s = f"{who} {rng.choice(vp)} , and the result is {rng.choice(verdict)} ."
    elif k == 10:
        s = f"{_a(inten() + a1).strip()} {g} : {n1} {v1} {a2} and it {rng.choice(eff)} ."
    elif k == 11:
        s = f"such {_a(a1)} {g} : {n1} {v1} {a2} and {who} {rng.choice(vp)} ."
    elif k == 12:  # the last clause decides
        s = f"{n1} {v1} {rng.choice(opp)} , but {n2} {v2} {inten()}{a1} and the {g} is {rng.choice(verdict)} ."
    elif k == 13:  # the first clause is negated
        s = f"{n1} {v1} not {rng.choice(opp)} at all ; {n2} {v2} {inten()}{a1} and {who} {rng.choice(vp)} ."
    elif k == 14:
        s = f"i expected {_a(rng.choice(opp))} {g} , but it {rng.choice(eff)} : {rng.choice(noun)} ."
    else:
        s = f"{n1} {v1} {a1} , {n2} {v2} {a2} , and this {g} {rng.choice(eff)} ."
    return Review(s, label)


def reaction(rng: Rng, label: int | None = None) -> Review:
    """A sentence about how a film was received, with the words 'positive' or 'negative' in their plain
    meaning: pretraining text only (like the web text real models learn their words from), never a sample."""
    if label is None:
        label = rng.randrange(2)
    polar, adj = ("positive", POS_ADJ) if label else ("negative", NEG_ADJ)
    np_, plural = rng.choice(ASPECTS)
    v, g, a = "are" if plural else "is", rng.choice(GENRES), rng.choice(adj)
    k = rng.randrange(6)
    if k == 0:
        s = f"the reaction to this {g} was {polar} : {np_} {v} {a} ."
    elif k == 1:
        s = f"critics were {polar} about {np_} , calling it {a} ."
    elif k == 2:
        s = f"overall my feelings about this {g} are {polar} , because {np_} {v} {a} ."
    elif k == 3:
        s = f"the early reviews of the {g} are {polar} ; people call {np_} {a} ."
    elif k == 4:
        s = f"word of mouth has been {polar} since {np_} {v} so {a} ."
    else:
        s = f"{_a(a)} {g} , and the audience felt {polar} about it ."
    return Review(s, label)


EVENTS_TALKED = ["the concert", "the trip to the coast", "your new phone", "dinner at Luigi's", "the party",
                 "the job interview", "the hotel", "the match", "the wedding", "your holiday", "the hike",
                 "the museum", "the first day at work", "the driving test", "the camping weekend", "the flight"]
POS_MOOD = ["It was amazing", "It was great", "So much fun", "It was perfect", "Fantastic", "Lovely, really",
            "I loved it", "I had a great time", "Best day ever", "Everyone was so happy", "I'd go again tomorrow",
            "Really enjoyed it", "Better than I hoped", "Brilliant, thanks for asking"]
NEG_MOOD = ["It was horrible", "Pretty bad", "So disappointing", "It was awful", "Terrible", "A nightmare, really",
            "I hated it", "I had a miserable time", "Worst day ever", "Everyone was upset", "Never again",
            "I left early", "Worse than I feared", "Don't ask"]


def chat_reaction(rng: Rng, label: int | None = None) -> Review:
    """Two chat lines about how an everyday event went, happy or unhappy: pretraining text only (the
    built-in model's one opinion task, on chats, never on films)."""
    if label is None:
        label = rng.randrange(2)
    a, b = rng.sample(NAMES, 2)
    pool = POS_MOOD if label else NEG_MOOD
    r1 = rng.choice(pool)
    r2 = rng.choice([x for x in pool if x != r1])
    q = rng.choice(["How was {e}?", "So, how did {e} go?", "Tell me about {e}!", "And {e}?"])
    reply = f"{r1}. {r2}." if rng.random() < 0.6 else f"{r1}!"
    return Review(f"{a}: {q.format(e=rng.choice(EVENTS_TALKED))}\n{b}: {reply}", label)


# -- long reviews (IMDb style) ----------------------------------------------------------------------
def _sentence_case(text: str) -> str:
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    return text[0].upper() + text[1:]


def long_review(rng: Rng, label: int | None = None) -> Review:
    """Three to five review sentences in ordinary prose, one sentiment throughout."""
    if label is None:
        label = rng.randrange(2)
    parts = [_sentence_case(review(rng, label).text) for _ in range(3 + rng.randrange(3))]
    closer = rng.choice(POS_VERDICT if label else NEG_VERDICT)
    return Review(" ".join([*parts, f"All in all, {closer}."]), label, tuple(parts))


# -- dialogues ------------------------------------------------------------------------------------------
NAMES = ["Anna", "Tom", "Kate", "Ben", "Lucy", "Mark", "Emma", "Jack", "Sophie", "Dan", "Mia", "Sam", "Olivia",
         "Leo", "Chloe", "Max", "Grace", "Luke", "Ella", "Adam", "Zoe", "Ryan", "Nina", "Paul", "Laura", "Chris",
         "Hannah", "Josh", "Amy", "Eric", "Julia", "Nick", "Rose", "Alex", "Maya", "Oscar", "Ivy", "Noah", "Sara",
         "Jake", "Lily", "Owen", "Ruby", "Sean", "Clara", "Finn", "Eva", "Hugo", "Alice", "Tim", "Jade", "Kevin",
         "Rita", "Diego", "Megan", "Ivan", "Gina", "Carlos", "Priya", "Omar", "Yuki", "Tariq", "Lena", "Marco"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["6", "7", "8", "half past 6", "half past 7", "10", "11", "noon", "2", "3", "4", "5"]
PLACES = ["the cinema", "the park", "the station", "the library", "the gym", "the museum", "the beach",
          "the cafe on Main Street", "the pizza place", "the bookshop", "the market", "the swimming pool",
          "the bowling alley", "the old bridge"]
ITEMS = ["drill", "ladder", "camera", "tent", "bike", "suitcase", "laptop charger", "blender", "sewing machine",
         "projector", "tennis racket", "car jack"]
GROCERIES = ["milk and bread", "eggs", "coffee", "tomatoes and onions", "rice", "bananas", "cheese", "dog food",
             "orange juice", "butter and flour", "a bag of apples", "washing-up liquid"]
SHOPS = ["the supermarket", "the corner shop", "the market", "the bakery", "the chemist"]
LATE_REASONS = [("the traffic is terrible", "got stuck in traffic"), ("I missed the bus", "missed the bus"),
                ("my train is delayed", "is on a delayed train"), ("I overslept", "overslept"),
                ("my meeting ran over", "had a meeting that ran over"), ("I had a flat tyre", "had a flat tyre")]
EVENTS = ["dinner", "the study session", "our run", "tennis", "the cinema trip", "our coffee", "the band practice",
          "the book club"]
CANCEL_REASONS = [("I'm ill", "is ill"), ("I have to work late", "has to work late"),
                  ("my car broke down", "has car trouble"), ("my sister is visiting", "has a visiting sister"),
                  ("I have a deadline", "has a deadline")]
RELATIVES = ["Mum", "Dad", "Grandma", "Grandpa", "our boss", "Aunt Jo", "the neighbours"]
OCCASIONS = ["birthday", "retirement", "anniversary", "housewarming"]
GIFTS = ["a cookbook", "a scarf", "concert tickets", "a plant", "a watch", "a photo album", "a board game",
         "a bottle of wine", "a cooking class", "a picnic basket"]
RESTAURANTS = ["Luigi's", "the Golden Dragon", "Casa Rosa", "the Blue Fish", "Little Tokyo", "the Olive Tree"]
LOST = [("keys", True), ("phone", False), ("wallet", False), ("umbrella", False), ("glasses", True),
        ("headphones", True), ("notebook", False)]
FOUND_AT = ["on the kitchen table", "in the car", "at the office", "in the blue bag", "under the sofa",
            "in the coat pocket", "at the gym"]
PETS = ["cat", "dog", "rabbit", "parrot", "hamster", "tortoise"]
PET_NAMES = ["Milo", "Bella", "Coco", "Pepper", "Ziggy", "Luna", "Biscuit", "Rocky"]
PERIODS = ["the weekend", "next week", "three days", "the holidays"]
SUBJECTS = ["maths", "chemistry", "history", "biology", "French", "physics", "economics"]
SHOWS = ["concert", "football match", "play", "comedy show", "jazz night", "opera"]
PRICES = ["20 pounds", "35 pounds", "15 pounds", "50 pounds", "40 pounds"]
COUNTS = ["two", "three", "four", "five", "six"]


@dataclass(frozen=True)
class Dialogue:
    lines: tuple[tuple[str, str], ...]  # (speaker, text)
    summary: str
    topic: str

    def text(self, speakers: dict[str, str] | None = None) -> str:
        return "\n".join(f"{(speakers or {}).get(s, s)}: {t}" for s, t in self.lines)

    def units(self) -> list[str]:
        # the summary alone too: two chats that differ in wording but state the same plan are one example
        return [self.text() + "\n" + self.summary, self.summary]


def _pick(rng, *options):
    return rng.choice(options)


def dialogue(rng: Rng) -> Dialogue:
    """A short chat between two people about one everyday plan, and a one-sentence summary of it."""
    a, b = rng.sample(NAMES, 2)
    k = rng.randrange(14)
    L: list[tuple[str, str]] = []

    def say(who, *options):
        L.append((who, rng.choice(options)))

    if k == 0:
        place, day, time = rng.choice(PLACES), rng.choice(DAYS), rng.choice(TIMES)
        say(a, f"Are you free on {day}?", f"Any plans for {day}?", f"What are you doing on {day}?")
        say(b, "Not really, why?", "Nothing yet. What's up?", "I'm free. Why?")
        say(a, f"Let's go to {place}!", f"Fancy going to {place}?", f"How about {place}?")
        say(b, "Great idea. What time?", "Sounds good, when?", "Sure! What time suits you?")
        say(a, f"{time}?", f"Say {time}?", f"Is {time} OK?")
        say(b, "Perfect, see you there.", "Deal, see you then!", "Works for me.")
        summary = _pick(rng, f"{a} and {b} will meet at {place} on {day} at {time}.",
                        f"{a} and {b} are going to {place} on {day} at {time}.")
        topic = "meeting up"
    elif k == 1:
        minutes, (reason, reason3) = rng.choice(["10", "15", "20", "30", "45"]), rng.choice(LATE_REASONS)
        place = rng.choice(PLACES)
        say(a, "Sorry, I'm running late.", "I'm going to be late, sorry!", "Bad news, I'll be late.")
        say(b, "How late?", "Oh no, how long?", "No worries. How long?")
        say(a, f"About {minutes} minutes, {reason}.", f"{minutes} minutes or so, {reason}.")
        say(b, f"OK, I'll wait at {place}.", f"Fine, I'll be at {place}.", f"No problem, I'm at {place}.")
        summary = _pick(rng, f"{a} {reason3} and will be {minutes} minutes late. {b} will wait at {place}.",
                        f"{a} will be {minutes} minutes late; {b} is waiting at {place}.")
        topic = "running late"
    elif k == 2:
        item, day = rng.choice(ITEMS), rng.choice(DAYS)
        say(a, f"Can I borrow your {item} on {day}?", f"Could you lend me your {item} for {day}?")
        say(b, "Sure, what for?", "Of course. What do you need it for?")
        say(a, "I have a small job to do at home.", "A friend asked me for help.", "I'm fixing up the flat.")
        say(b, f"I'll drop it off on {day} morning.", f"I'll bring it round on {day}.")
        say(a, "Thanks a lot!", "You're a star, thanks!")
        summary = _pick(rng, f"{b} will lend {a} the {item} on {day}.",
                        f"{a} is borrowing {b}'s {item} on {day}.")
        topic = "borrowing"
    elif k == 3:
        food, shop = rng.choice(GROCERIES), rng.choice(SHOPS)
        say(a, f"Are you at {shop}?", f"Are you still at {shop}?", f"Are you going past {shop}?")
        say(b, "Yes, do you need anything?", "Yep, need something?", "I am, what do you need?")
        say(a, f"Could you get {food}?", f"Can you grab {food}, please?", f"We're out of {food}.")
        say(b, "Sure, anything else?", "No problem. Anything else?", "Got it. Something else?")
        say(a, "No, that's all, thanks!", "That's it, thank you!")
        summary = _pick(rng, f"{b} will buy {food} for {a} at {shop}.", f"{b} is getting {food} at {shop} for {a}.")
        topic = "shopping"
    elif k == 4:
        event, (reason, reason3), day = rng.choice(EVENTS), rng.choice(CANCEL_REASONS), rng.choice(DAYS)
        say(a, f"I can't make {event} today, {reason}.", f"Sorry, I have to cancel {event}, {reason}.")
        say(b, "Oh, that's a shame.", "No problem, these things happen.", "Oh no! Never mind.")
        say(a, f"Can we do it on {day} instead?", f"How about {day}?", f"Would {day} work for you?")
        say(b, f"{day} is fine.", f"Yes, {day} works.", f"Sure, let's say {day}.")
        summary = _pick(rng, f"{a} {reason3}, so {a} and {b} moved {event} to {day}.",
                        f"{a} cancelled {event} and will do it with {b} on {day} instead.")
        topic = "rescheduling"
    elif k == 5:
        who, occasion, gift = rng.choice(RELATIVES), rng.choice(OCCASIONS), rng.choice(GIFTS)
        say(a, f"Any idea for {who}'s {occasion} present?", f"What should we get {who} for the {occasion}?")
        say(b, "No idea. Any suggestions?", "Hmm, not sure. You?", "I was going to ask you!")
        say(a, f"What about {gift}?", f"Maybe {gift}?", f"I thought of {gift}.")
        say(b, "Good idea, let's split the cost.", "Love it, we can share the cost.", "Perfect, let's go halves.")
        summary = _pick(rng, f"{a} and {b} will buy {gift} for {who}'s {occasion}.",
                        f"{a} and {b} are getting {who} {gift} for the {occasion}.")
        topic = "gift"
    elif k == 6:
        place, day, time, n = rng.choice(RESTAURANTS), rng.choice(DAYS), rng.choice(TIMES), rng.choice(COUNTS)
        say(a, f"Shall I book a table at {place}?", f"Should I reserve a table at {place}?")
        say(b, "Yes please! For when?", "Good idea, which day?", "Sure, when?")
        say(a, f"{day} at {time}, for {n} people.", f"{day}, {time} o'clock, {n} of us.")
        say(b, "Great, go ahead.", "Sounds perfect.", "Book it!")
        summary = _pick(rng, f"{a} will book a table for {n} at {place} on {day} at {time}.",
                        f"{a} is reserving a table at {place} for {n} people on {day} at {time}.")
        topic = "restaurant"
    elif k == 7:
        (item, plural), where = rng.choice(LOST), rng.choice(FOUND_AT)
        it = "them" if plural else "it"
        say(a, f"Have you seen my {item}?", f"I can't find my {item} anywhere!", f"I've lost my {item} again.")
        say(b, f"I think I saw {it} {where}.", f"Check {where}.", f"Yes, {it} {'are' if plural else 'is'} {where}.")
        say(a, f"Found {it}, thanks!", "Got it, thank you!", "Phew, thanks!")
        summary = _pick(rng, f"{a} lost the {item}, and {b} said they were {where}." if plural
                        else f"{a} lost the {item}, and {b} said it was {where}.",
                        f"{b} helped {a} find the {item} {where}.")
        topic = "lost and found"
    elif k == 8:
        pet, name, period = rng.choice(PETS), rng.choice(PET_NAMES), rng.choice(PERIODS)
        say(a, f"Could you look after {name} for {period}?", f"Can you take care of {name} for {period}?")
        say(b, f"Your {pet}? Sure.", f"Of course, I love your {pet}.", f"Happy to, {name} is a sweetheart.")
        say(a, "Thanks! The food is in the cupboard.", "Thank you! I'll leave the food and the keys.")
        say(b, "No problem, have a good trip.", "Don't worry, enjoy your trip!")
        summary = _pick(rng, f"{b} will look after {a}'s {pet} {name} for {period}.",
                        f"{b} is taking care of {name}, {a}'s {pet}, for {period}.")
        topic = "pet sitting"
    elif k == 9:
        day, bring = rng.choice(DAYS), rng.choice(["a van", "some boxes", "pizza", "a trolley", "tape"])
        say(a, f"I'm moving flat on {day}. Could you help?", f"Any chance you could help me move on {day}?")
        say(b, "Sure, what time?", "Of course! When do we start?")
        say(a, "Around 9 in the morning.", "Early, about 9.", "Nine-ish, if that's OK.")
        say(b, f"OK, I'll bring {bring}.", f"Fine. I can bring {bring}.")
        summary = _pick(rng, f"{b} will help {a} move on {day} morning and will bring {bring}.",
                        f"{a} is moving on {day}; {b} will help and bring {bring}.")
        topic = "moving"
    elif k == 10:
        subject, day = rng.choice(SUBJECTS), rng.choice(DAYS)
        say(a, f"Can you send me your {subject} notes?", f"Could I have your {subject} notes?")
        say(b, "Sure, which ones?", "Yes, for which week?")
        say(a, f"Everything for the exam on {day}.", f"All of them, the exam is on {day}.")
        say(b, "I'll email them tonight.", "I'll send them later today.")
        summary = _pick(rng, f"{b} will send {a} the {subject} notes for the exam on {day}.",
                        f"{a} asked {b} for the {subject} notes before the exam on {day}.")
        topic = "school"
    elif k == 11:
        day, day2 = rng.sample(DAYS, 2)
        place = rng.choice(["the park", "the beach", "the lake", "the garden", "the hill"])
        say(a, f"It's going to rain on {day}.", f"Have you seen the forecast? Rain on {day}.")
        say(b, "Oh no, what about the picnic?", "So the picnic is off?")
        say(a, f"Let's move it to {day2}.", f"We could do it on {day2} instead.")
        say(b, f"OK, {day2} at {place} then.", f"Fine, {day2} it is, same place.")
        summary = _pick(rng, f"Because of rain on {day}, {a} and {b} moved the picnic to {day2}.",
                        f"{a} and {b} moved the picnic from {day} to {day2} because of the rain.")
        topic = "weather"
    elif k == 12:
        show, day, price = rng.choice(SHOWS), rng.choice(DAYS), rng.choice(PRICES)
        say(a, f"I got us two tickets for the {show} on {day}!", f"Guess what, I bought tickets for the {show}!")
        say(b, "Amazing! How much do I owe you?", "Wow, thanks! What do I owe you?")
        say(a, f"{price}.", f"{price}, whenever you can.")
        say(b, "I'll pay you back tomorrow.", "I'll transfer it tonight.")
        summary = _pick(rng, f"{a} bought tickets for the {show} on {day}; {b} will pay {a} back {price}.",
                        f"{b} owes {a} {price} for a ticket to the {show} on {day}.")
        topic = "tickets"
    else:
        day, time = rng.choice(DAYS), rng.choice(["3", "4", "half past 3", "5"])
        job = rng.choice(["a dentist appointment", "a job interview", "a doctor's appointment", "a meeting"])
        say(a, f"I have {job} on {day} at {time}.", f"I've got {job} at {time} on {day}.")
        say(a, "Could you pick up the kids from school?", "Can you collect the kids?")
        say(b, "Sure, no problem.", "Yes, I'll get them.", "Of course.")
        summary = _pick(rng, f"{b} will pick up the kids from school on {day} because {a} has {job}.",
                        f"{a} has {job} on {day}, so {b} will collect the kids.")
        topic = "family"
    return Dialogue(tuple(L), summary, topic)


def person_tags(d: Dialogue) -> tuple[str, str]:
    """DialogSum's form of a dialogue: speakers as #Person1#, #Person2# in the dialogue and the summary."""
    speakers: dict[str, str] = {}
    for s, _ in d.lines:
        speakers.setdefault(s, f"#Person{len(speakers) + 1}#")
    summary = d.summary
    for real, tag in speakers.items():
        summary = re.sub(rf"\b{re.escape(real)}\b", tag, summary)
    return d.text(speakers), summary


# -- news articles (CNN/DailyMail style) ---------------------------------------------------------------
TOWNS = ["Windle Point", "Marrowby", "Eastcombe", "Fallow Bay", "Kingsreach", "Hollin Vale", "Stonebridge",
         "Larkhill", "Redmere", "Ashcombe", "Thornwick", "Brightwater", "Oakhurst", "Pellmarsh", "Cranford",
         "Dunmere", "Elmsworth", "Gullhaven", "Harrowgate Sands", "Ivybridge Cross", "Juniper Falls", "Kestrel Moor",
         "Lowmoor", "Millbrook"]
FIRST = [("Tessa", "she"), ("Martin", "he"), ("Aisha", "she"), ("Graham", "he"), ("Helen", "she"),
         ("Victor", "he"), ("Nadia", "she"), ("Simon", "he"), ("Irene", "she"), ("Kofi", "he"), ("Petra", "she"),
         ("Arjun", "he"), ("Fiona", "she"), ("Declan", "he"), ("Marta", "she"), ("Rashid", "he")]
LAST = ["Quinn", "Harlow", "Okafor", "Brennan", "Castell", "Moreau", "Patel", "Lindqvist", "Garrow", "Ashby",
        "Fenwick", "Oduya", "Sandoval", "Whitcombe"]
NEWS = [  # (event, [what happened], [a detail], role of the person quoted)
    ("kite festival", ["more than {n} kites filled the sky", "{n} kite flyers gathered on the cliffs"],
     ["flyers travelled from {m} countries", "the largest kite was {m} metres long"], "organiser"),
    ("charity run", ["{n} runners raised money for the local hospital", "a charity run drew {n} runners"],
     ["the oldest runner was {m} years old", "the route was {m} kilometres long"], "organiser"),
    ("new bridge", ["a new footbridge opened after {m} months of work", "the river bridge reopened to walkers"],
     ["it cost {n} thousand pounds", "{n} people crossed it on the first day"], "council leader"),
    ("storm", ["strong winds brought down {n} trees", "a storm closed the coast road"],
     ["{m} homes lost power overnight", "gusts reached {m}0 miles an hour"], "fire chief"),
    ("library reopening", ["the library reopened with {n} new books", "the town library opened its doors again"],
     ["{m} volunteers helped to repaint it", "it had been closed for {m} months"], "head librarian"),
    ("football final", ["the town club won the county cup in front of {n} fans", "the local team lifted the cup"],
     ["the winning goal came in the {m}th minute", "it was the club's first title in {m} years"],
     "club captain"),
    ("farmers market", ["the first farmers market drew {n} visitors", "a new weekly market opened in the square"],
     ["{m} stalls sold local food", "farmers came from {m} villages"], "market manager"),
    ("science prize", ["a local school won a national science prize", "pupils won a national engineering award"],
     ["{m} pupils built a solar car", "the team worked on it for {m} weeks"], "head teacher"),
    ("photo exhibition", ["a new exhibition of {n} old photographs opened", "the museum put {n} old photos on show"],
     ["it runs for {m} weeks", "some pictures are {m}0 years old"], "curator"),
    ("beach clean-up", ["{n} volunteers cleared litter from the beach", "a beach clean-up drew {n} volunteers"],
     ["they filled {m} skips", "they collected {m} bags of plastic"], "organiser"),
    ("flower show", ["{n} gardeners entered the summer flower show", "the flower show returned after a break"],
     ["the winning rose took {m} years to grow", "{m} prizes were handed out"], "show judge"),
    ("rescue", ["lifeboat crews rescued {m} walkers cut off by the tide", "a lifeboat crew saved {m} people"],
     ["the rescue took {m}0 minutes", "nobody was hurt"], "lifeboat captain"),
    ("new bus route", ["a new bus route links the town to the city", "buses now run every {m} minutes"],
     ["{n} passengers used it in the first week", "the service runs until midnight"], "transport manager"),
    ("food festival", ["a food festival brought {n} visitors to the harbour", "{n} people came to taste local food"],
     ["{m} chefs cooked on open stages", "the queue for pies stretched {m}0 metres"], "organiser"),
]


@dataclass(frozen=True)
class Article:
    text: str
    highlights: str

    def units(self) -> list[str]:
        return [self.text + "\n" + self.highlights, self.highlights]


def article(rng: Rng) -> Article:
    """A short fictional local news story and two or three highlight lines drawn from it."""
    town, (event, whats, details, role) = rng.choice(TOWNS), rng.choice(NEWS)
    n = str(rng.choice([120, 200, 350, 500, 650, 800, 1200, 1500, 2000, 3000, 4500]))
    m = str(rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 18, 25]))
    what, detail = rng.choice(whats).format(n=n, m=m), rng.choice(details).format(n=n, m=m)
    (first, pron), last = rng.choice(FIRST), rng.choice(LAST)
    person, day = f"{first} {last}", rng.choice(DAYS)
    mood = rng.choice(["delighted", "amazed", "moved", "overwhelmed", "touched", "thrilled"])
    plan = rng.choice(["hopes to repeat it next year", "wants to make it an annual event",
                       "will publish a full report next month", "thanked everyone who took part",
                       "promised more money for next year", "will meet residents next week"])
    opening = rng.choice([f"In {town} on {day}, {what}.", f"On {day} in {town}, {what}.",
                          f"{what[0].upper() + what[1:]} in {town} on {day}."])
    sentences = [opening,
                 rng.choice([f"The {event} was the talk of the town all week.",
                             f"Residents had waited months for the {event}.",
                             f"It was the biggest {event} the town has seen."]),
                 rng.choice([f"Officials said {detail}.", f"According to organisers, {detail}.",
                             f"Figures show {detail}."]),
                 rng.choice([f"{role.capitalize()} {person} said {pron} was {mood} by the response.",
                             f"\"We are {mood},\" said {role} {person}."]),
                 rng.choice([f"Local shops reported a busy {day}.", "Cafes in the high street ran out of cake.",
                             "Car parks were full by ten in the morning."]),
                 f"The council {plan}."]
    if rng.random() < 0.5:
        sentences.insert(2, rng.choice(["Crowds gathered early despite the cold.", "The weather stayed dry.",
                                        "Many families came from nearby villages.", "Local radio covered it live."]))
    highlights = [rng.choice([f"In {town}, {what}.", f"{town}: {what}."]), f"{detail[0].upper() + detail[1:]}."]
    if rng.random() < 0.6:
        highlights.append(f"The council {plan}.")
    return Article(" ".join(sentences), "\n".join(highlights))


# -- near duplicates ------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9'#]+")


def words(text: str) -> frozenset[str]:
    """The set of lowercase words of a text (punctuation and speaker colons dropped)."""
    return frozenset(_WORD.findall(text.lower()))


def normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


class NearDuplicateIndex:
    """Texts as sets of their words. `near(units)` answers whether any unit (a text, or a part of one that
    must not repeat: a sentence of a long review, a summary) equals an indexed unit after normalisation or
    has word-set Jaccard similarity >= threshold with one.

    Candidates come from an inverted index with prefix filtering: if J(A, B) >= t then B holds at least
    ceil(t|A|) words of A, so any |A| - ceil(t|A|) + 1 words of A include one of B's; taking A's rarest
    words keeps the candidate lists short. Every candidate is then checked exactly."""

    def __init__(self, units=(), threshold: float = NEAR_DUPLICATE):
        self.threshold = threshold
        self.sets: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = {}
        self.exact: set[str] = set()
        self.add(units)

    def add(self, units) -> None:
        for u in units:
            ws = words(u)
            for w in ws:
                self.postings.setdefault(w, []).append(len(self.sets))
            self.sets.append(ws)
            self.exact.add(normalized(u))

    def near(self, units) -> bool:
        t = self.threshold
        for u in units:
            if normalized(u) in self.exact:
                return True
            a = words(u)
            if not a:
                continue
            need = math.ceil(t * len(a) - 1e-9)
            prefix = sorted(a, key=lambda w: (len(self.postings.get(w, ())), w))[: len(a) - need + 1]
            seen: set[int] = set()
            for w in prefix:
                for i in self.postings.get(w, ()):
                    if i in seen:
                        continue
                    seen.add(i)
                    b = self.sets[i]
                    inter = len(a & b)
                    if inter >= t * (len(a) + len(b) - inter) - 1e-9:
                        return True
        return False

    def __len__(self) -> int:
        return len(self.sets)


def closest(units_a, units_b) -> tuple[float, str, str]:
    """(largest word-set Jaccard similarity, unit of a, unit of b) over all pairs, for reports and tests."""
    sets_b = [(words(u), u) for u in units_b]
    best = (0.0, "", "")
    for ua in units_a:
        wa = words(ua)
        for wb, ub in sets_b:
            union = len(wa | wb)
            if union and len(wa & wb) / union > best[0]:
                best = (len(wa & wb) / union, ua, ub)
    return best


# -- splits ---------------------------------------------------------------------------------------------
# sizes of the bundled sets: (train, validation); the validation (IMDb: test) split of each is drawn first
SIZES = {"sst2": (600, 200), "samsum": (600, 60), "imdb": (200, 60), "dialogsum": (300, 40),
         "cnn_dailymail": (200, 30)}
# each dataset its own offset into the seeds, so two datasets never share a stream
OFFSETS = {"sst2": 0, "samsum": 10, "imdb": 20, "dialogsum": 30, "cnn_dailymail": 40}
HELD_OUT = {"imdb": "test"}  # the split the app evaluates on, where it is not called validation


def _make(name: str):
    return {"sst2": review, "imdb": long_review, "samsum": dialogue, "dialogsum": dialogue,
            "cnn_dailymail": article}[name]


def draw(make, seed: int, n: int, avoid: NearDuplicateIndex, balance: bool = False, distinct: bool = True,
         units=lambda item: item.units()) -> list:
    """n items of make(rng) (make(rng, label) with labels alternating when balance is set) whose units are
    not near `avoid`, nor (distinct) near an item drawn before. Deterministic for a seed."""
    rng = Rng(seed)
    out, own = [], NearDuplicateIndex()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"synth: could not draw {n} distinct items (got {len(out)})")
        item = make(rng, len(out) % 2) if balance else make(rng)
        us = units(item)
        if avoid.near(us) or (distinct and own.near(us)):
            continue
        if distinct:
            own.add(us)
        out.append(item)
    return out


def _units(name: str):
    if name == "dialogsum":  # compared in the form it is shipped in: speakers as #Person1#, #Person2#
        return lambda d: ["\n".join(person_tags(d)), person_tags(d)[1]]
    return lambda item: item.units()


_CACHE: dict = {}


def held_out_items() -> dict[str, list]:
    """The validation items of every bundled dataset, drawn first and distinct across all of them."""
    if "held" not in _CACHE:
        index, out = NearDuplicateIndex(), {}
        for name, (_, n_val) in SIZES.items():
            out[name] = draw(_make(name), SEEDS["validation"] + OFFSETS[name], n_val, index,
                             balance=name in ("sst2", "imdb"), units=_units(name))
            for item in out[name]:
                index.add(_units(name)(item))
        _CACHE["held"] = out
        _CACHE["held_index"] = index
    return _CACHE["held"]


def held_out_index() -> NearDuplicateIndex:
    """Every validation unit of every bundled dataset: what no training or pretraining text may come near."""
    held_out_items()
    return _CACHE["held_index"]


def train_items(name: str) -> list:
    key = ("train", name)
    if key not in _CACHE:
        n_train = SIZES[name][0]
        _CACHE[key] = draw(_make(name), SEEDS["train"] + OFFSETS[name], n_train, held_out_index(),
                           balance=name in ("sst2", "imdb"), units=_units(name))
    return _CACHE[key]


def sample_rows(name: str) -> dict[str, list[dict]]:
    """The rows of one bundled dataset, {split: [row, ...]}, with the Hub dataset's columns."""
    if name not in SIZES:
        raise ValueError(f"synth: no generator for {name}")
    splits = {"train": train_items(name), HELD_OUT.get(name, "validation"): held_out_items()[name]}
    out = {}
    for split, items in splits.items():
        if name == "sst2":
            rows = [{"idx": i, "sentence": r.text, "label": r.label} for i, r in enumerate(items)]
        elif name == "imdb":
            rows = [{"text": r.text, "label": r.label} for r in items]
        elif name == "samsum":
            tag = "s" if split == "train" else "v"
            rows = [{"id": f"{tag}{i:04d}", "dialogue": d.text(), "summary": d.summary}
                    for i, d in enumerate(items, 1)]
        elif name == "dialogsum":
            rows = [{"id": f"{split}_{i}", "dialogue": person_tags(d)[0], "summary": person_tags(d)[1],
                     "topic": d.topic} for i, d in enumerate(items)]
        else:
            rows = [{"id": hashlib.sha1(a.text.encode()).hexdigest(), "article": a.text,
                     "highlights": a.highlights} for a in items]
        out[split] = rows
    return out


def row_units(name: str, row: dict) -> list[str]:
    """The units of a shipped row, rebuilt from its columns (for checks on the files themselves)."""
    if name == "sst2":
        return [row["sentence"]]
    if name == "imdb":
        parts = re.split(r"(?<=\.) (?=[A-Z])", row["text"])
        return [row["text"], *[p for p in parts if not p.startswith("All in all")]]
    if name in ("samsum", "dialogsum"):
        return [row["dialogue"] + "\n" + row["summary"], row["summary"]]
    return [row["article"] + "\n" + row["highlights"], row["highlights"]]
