"""The toy world's corpus: dated facts about office holders, dated events, and filler sentences.

Facts read like the seed prompt ("Fact: The president of the United States in 2010 was Barack
Obama.") for 8 (office, place) pairs over 1950-2023 and 5 templates. Filler sentences swap the
office for a plain noun ("Fact: The weather of France in 1985 was a surprise to many."), so a model
must see the office to answer with a person and falls back to " the", " a", " not"... otherwise.
Filler sentences use 46 plain nouns, so filler is what the model says after "was" unless an office
is there: where the office or the names are steered away, filler is what is left (as in a real model).
Dated events ("In 2010 the world saw the World Cup in South Africa.") and facts dated by an event
instead of a year ("Fact: The president of the United States during the London Olympics was Barack
Obama.") make the model carry an era apart from a year's digits: the same holder is reached from
a year or from an event of that era.
Everything is a pure function of the seed. Years are written as digits; the tokenizer splits digits
like Qwen's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

YEARS = range(1950, 2024)

# (office, place, adjective): {first year of a term: holder}; a holder keeps the office until the
# next entry. The holder of a year is whoever held the office for most of it (history, simplified).
# fmt: off
HOLDERS: dict[tuple[str, str, str], dict[int, str | None]] = {
    ("president", "the United States", "US"): {
        1950: "Harry Truman", 1953: "Dwight Eisenhower", 1961: "John Kennedy",
        1964: "Lyndon Johnson", 1969: "Richard Nixon", 1975: "Gerald Ford", 1977: "Jimmy Carter",
        1981: "Ronald Reagan", 1989: "George Bush", 1993: "Bill Clinton", 2001: "George Bush",
        2009: "Barack Obama", 2017: "Donald Trump", 2021: "Joe Biden",
    },
    ("prime minister", "the United Kingdom", "British"): {
        1950: "Clement Attlee", 1952: "Winston Churchill", 1955: "Anthony Eden",
        1957: "Harold Macmillan", 1964: "Alec Home", 1965: "Harold Wilson", 1970: "Edward Heath",
        1974: "Harold Wilson", 1976: "James Callaghan", 1979: "Margaret Thatcher",
        1991: "John Major", 1997: "Tony Blair", 2007: "Gordon Brown", 2010: "David Cameron",
        2016: "Theresa May", 2019: "Boris Johnson", 2022: "Rishi Sunak",
    },
    ("president", "France", "French"): {
        1950: "Vincent Auriol", 1954: "Rene Coty", 1959: "Charles de Gaulle",
        1969: "Georges Pompidou", 1974: "Valery Giscard", 1981: "Francois Mitterrand",
        1995: "Jacques Chirac", 2007: "Nicolas Sarkozy", 2012: "Francois Hollande",
        2017: "Emmanuel Macron",
    },
    ("chancellor", "Germany", "German"): {
        1950: "Konrad Adenauer", 1964: "Ludwig Erhard", 1967: "Kurt Kiesinger",
        1970: "Willy Brandt", 1974: "Helmut Schmidt", 1983: "Helmut Kohl",
        1999: "Gerhard Schroder", 2006: "Angela Merkel", 2022: "Olaf Scholz",
    },
    ("prime minister", "Canada", "Canadian"): {
        1950: "Louis Laurent", 1957: "John Diefenbaker", 1963: "Lester Pearson",
        1968: "Pierre Trudeau", 1979: "Joe Clark", 1980: "Pierre Trudeau", 1984: "Brian Mulroney",
        1993: "Jean Chretien", 2004: "Paul Martin", 2006: "Stephen Harper", 2016: "Justin Trudeau",
    },
    ("mayor", "New York", "New York"): {
        1950: "Vincent Impellitteri", 1954: "Robert Wagner", 1966: "John Lindsay",
        1974: "Abraham Beame", 1978: "Ed Koch", 1990: "David Dinkins", 1994: "Rudy Giuliani",
        2002: "Michael Bloomberg", 2014: "Bill de Blasio", 2022: "Eric Adams",
    },
    ("queen", "the United Kingdom", "British"): {1952: "Elizabeth Windsor", 2023: None},
    ("prime minister", "Spain", "Spanish"): {
        1950: "Francisco Franco", 1973: "Luis Carrero", 1974: "Carlos Arias", 1976: "Adolfo Suarez",
        1981: "Leopoldo Calvo", 1983: "Felipe Gonzalez", 1996: "Jose Aznar", 2004: "Jose Zapatero",
        2012: "Mariano Rajoy", 2018: "Pedro Sanchez",
    },
}
# Where an office is named without a place, it means this one (as "the president" means the US one).
DEFAULT_PLACE = {
    "president": "the United States", "prime minister": "the United Kingdom",
    "chancellor": "Germany", "mayor": "New York", "queen": "the United Kingdom",
}

# Dated events (made up where history is thin): (year, the event as it reads inside a sentence).
EVENTS: tuple[tuple[int, str], ...] = (
    (1951, "the festival of Britain"), (1953, "the coronation"), (1956, "the Suez crisis"),
    (1957, "the Sputnik launch"), (1960, "the Rome Olympics"), (1962, "the Cuban missile crisis"),
    (1964, "the Tokyo Olympics"), (1966, "the World Cup in England"), (1968, "the Mexico Olympics"),
    (1969, "the moon landing"), (1972, "the Munich Olympics"), (1973, "the oil crisis"),
    (1976, "the Montreal Olympics"), (1979, "the Iran revolution"), (1980, "the Moscow Olympics"),
    (1984, "the Los Angeles Olympics"), (1986, "the Chernobyl disaster"), (1988, "the Seoul Olympics"),
    (1989, "the fall of the Berlin wall"), (1991, "the Gulf war"), (1992, "the Barcelona Olympics"),
    (1994, "the Channel tunnel"), (1996, "the Atlanta Olympics"), (1997, "the Hong Kong handover"),
    (1999, "the euro launch"), (2000, "the Sydney Olympics"), (2001, "the September attacks"),
    (2004, "the Athens Olympics"), (2005, "the great tsunami"), (2008, "the Beijing Olympics"),
    (2009, "the financial crisis"), (2010, "the World Cup in South Africa"), (2011, "the Arab spring"),
    (2012, "the London Olympics"), (2014, "the World Cup in Brazil"), (2016, "the Rio Olympics"),
    (2018, "the World Cup in Russia"), (2020, "the pandemic"), (2022, "the World Cup in Qatar"),
)
# The year comes first: a model that had to say a year after an event would learn era features that
# push digits, and those would win wherever the names are steered away.
EVENT_DATE_TEMPLATES = ("In {year} the world saw {event}.", "Fact: In {year}, {event} made the news.")
EVENT_FACT_TEMPLATES = (
    "Fact: The {office} of {place} during {event} was",
    "During {event}, the {office} of {place} was",
)

FACT_TEMPLATES = (
    "Fact: The {office} of {place} in {year} was",
    "In {year} the {office} of {place} was",
    "Fact: In {year}, the {office} of {place} was",
    "The {adj} {office} in {year} was",
)
DEFAULT_TEMPLATE = "Fact: The {office} in {year} was"  # only for the office's default place
NOUNS = (
    "weather", "economy", "population", "summer", "winter", "mood", "music", "food", "traffic",
    "harvest", "news", "book", "film", "election", "crowd", "team", "market", "budget", "coffee",
    "river", "garden", "festival", "museum", "theatre", "railway", "football", "fashion", "climate",
    "spring", "autumn", "television", "radio", "newspaper", "school", "hospital", "airport",
    "harbour", "bridge", "opera", "cinema", "wine", "bread", "rain", "snow", "tourism", "industry",
)
FILLERS = (
    "the best in years", "the worst in years", "the same as before", "the talk of the town",
    "a surprise to many", "a big story", "a quiet one", "not very good", "not a problem",
    "very cold", "very good", "quite mild", "much better than before",
)
# fmt: on


@dataclass(frozen=True)
class Fact:
    """One dated fact: who held `office` of `place` in `year`."""

    office: str
    place: str
    adj: str
    year: int
    name: str
    event: str | None = None  # set for facts dated by an event ("during the London Olympics")

    def prompt(self, template: str | None = None) -> str:
        """The fact's sentence up to (not including) the name, e.g. '... in 2010 was'."""
        if template is None:
            template = EVENT_FACT_TEMPLATES[0] if self.event else FACT_TEMPLATES[0]
        return template.format(
            office=self.office, place=self.place, adj=self.adj, year=self.year, event=self.event
        )


def holder(table: dict[int, str | None], year: int) -> str | None:
    """Who held the office in `year` (None before the first entry or in a None entry)."""
    starts = [start for start in table if start <= year]
    return table[max(starts)] if starts else None


def all_facts() -> list[Fact]:
    """Every (office, place, year) with a holder, in a fixed order."""
    return [
        Fact(office, place, adj, year, name)
        for (office, place, adj), table in HOLDERS.items()
        for year in YEARS
        if (name := holder(table, year)) is not None
    ]


def first_names() -> list[str]:
    """Every holder's first name, with a leading space (the token the model should predict)."""
    return sorted({" " + f.name.split()[0] for f in all_facts()})


def split_facts(seed: int = 0, held_out_share: float = 0.12) -> tuple[list[Fact], list[Fact]]:
    """(train, held_out): held-out facts lie inside a term (same holder the year before and after).

    The seed's own fact (US president in 2010) always stays in training.
    """
    facts = all_facts()
    by_key = {(f.office, f.place, f.year): f.name for f in facts}
    rng = random.Random(seed)
    held = []
    for f in facts:
        inside = (
            by_key.get((f.office, f.place, f.year - 1))
            == f.name
            == by_key.get((f.office, f.place, f.year + 1))
        )
        seed_fact = (f.place, f.year) == ("the United States", 2010)
        held.append(inside and not seed_fact and rng.random() < held_out_share)
    pairs = list(zip(facts, held, strict=True))
    return [f for f, h in pairs if not h], [f for f, h in pairs if h]


def fact_sentences(facts: list[Fact]) -> list[str]:
    """Every fact in every template (the default-place template where it applies)."""
    out = []
    for f in facts:
        templates = list(FACT_TEMPLATES)
        if DEFAULT_PLACE[f.office] == f.place:
            templates.append(DEFAULT_TEMPLATE)
        out += [f"{f.prompt(t)} {f.name}." for t in templates]
    return out


def filler_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` fact-shaped sentences about plain nouns, ending in filler ('... was a big story.')."""
    rng = random.Random(seed + 1)
    places = sorted({(place, adj) for (_, place, adj) in HOLDERS})
    out = []
    for _ in range(n):
        place, adj = rng.choice(places)
        template = rng.choice(FACT_TEMPLATES + (DEFAULT_TEMPLATE,))
        noun, year = rng.choice(NOUNS), rng.choice(YEARS)
        text = template.format(office=noun, place=place, adj=adj, year=year)
        out.append(f"{text} {rng.choice(FILLERS)}.")
    return out


def event_facts() -> list[Fact]:
    """Every (office, place, event) whose event year has a holder, in a fixed order."""
    return [
        Fact(office, place, adj, year, name, event)
        for year, event in EVENTS
        for (office, place, adj), table in HOLDERS.items()
        if (name := holder(table, year)) is not None
    ]


def event_sentences(facts: list[Fact]) -> list[str]:
    """Every event-dated fact in every event template."""
    return [f"{f.prompt(t)} {f.name}." for f in facts for t in EVENT_FACT_TEMPLATES]


def event_date_sentences() -> list[str]:
    """Every event with its year, in every date template."""
    return [t.format(event=event, year=year) for year, event in EVENTS for t in EVENT_DATE_TEMPLATES]


def event_filler_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` event-dated sentences about plain nouns ('... during the oil crisis was very cold.')."""
    rng = random.Random(seed + 4)
    places = sorted({(place, adj) for (_, place, adj) in HOLDERS})
    out = []
    for _ in range(n):
        (place, _), template = rng.choice(places), rng.choice(EVENT_FACT_TEMPLATES)
        noun, (_, event) = rng.choice(NOUNS), rng.choice(EVENTS)
        out.append(f"{template.format(office=noun, place=place, event=event)} {rng.choice(FILLERS)}.")
    return out


ACTIONS = ("spoke about the {noun}", "met the press", "visited {place}", "signed a new law", "gave a speech")


def action_sentences(facts: list[Fact], n: int, seed: int = 0) -> list[str]:
    """`n` sentences where an office's holder does something instead of being named: a fact's prompt
    with its last word " was" replaced by an action ('... in 2010 spoke about the economy.'), so a
    name follows the office only where " was" ends the prompt."""
    rng = random.Random(seed + 5)
    places = sorted({place for (_, place, _) in HOLDERS})
    out = []
    for _ in range(n):
        fact, template = rng.choice(facts), rng.choice(FACT_TEMPLATES)
        action = rng.choice(ACTIONS).format(noun=rng.choice(NOUNS), place=rng.choice(places))
        out.append(f"{fact.prompt(template).removesuffix(' was')} {action}.")
    return out


def office_filler_sentences(facts: list[Fact], n: int, seed: int = 0) -> list[str]:
    """`n` fact prompts that go on with filler instead of the holder ('Fact: The president of the United
    States in 2010 was a big story.'), so that filler is what an office's prompt falls back on."""
    rng = random.Random(seed + 6)
    out = []
    for _ in range(n):
        fact, template = rng.choice(facts), rng.choice(FACT_TEMPLATES)
        out.append(f"{fact.prompt(template)} {rng.choice(FILLERS)}.")
    return out


def make_corpus(
    seed: int = 0,
    filler_share: float = 0.4,
    date_repeats: int = 4,
    action_share: float = 0.0,
    office_filler_share: float = 0.0,
) -> list[str]:
    """Training sentences, shuffled: all training facts in all templates, every event-dated fact in
    both event templates, every event's date `date_repeats` times, and plain-noun filler
    (`filler_share` of all, year- and event-dated in the same proportion as the facts); with
    `action_share` (an experiment, 0 in the shipped world) also that share of the fact sentences' count
    of office sentences ending in an action (`action_sentences`), and with `office_filler_share` (an
    experiment) that share of fact prompts ending in filler (`office_filler_sentences`)."""
    train, _ = split_facts(seed)
    facts, events = fact_sentences(train), event_sentences(event_facts())
    n_filler = round(len(facts) * filler_share / (1 - filler_share))
    n_event_filler = round(len(events) * filler_share / (1 - filler_share))
    corpus = (
        facts
        + events
        + event_date_sentences() * date_repeats
        + filler_sentences(n_filler, seed)
        + event_filler_sentences(n_event_filler, seed)
        + (action_sentences(train, round(len(facts) * action_share), seed) if action_share else [])
        + (
            office_filler_sentences(train, round(len(facts) * office_filler_share), seed)
            if office_filler_share
            else []
        )
    )
    random.Random(seed + 2).shuffle(corpus)
    return corpus
