"""Prompt sets: frozen rows of (clean, corrupted, target, foil), read from JSONL/CSV or built from templates."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.engine.errors import PromptError

MAX_ROWS = 10_000
MAX_PROMPT_CHARS = 4_000
MAX_FILE_BYTES = 16 * 1024 * 1024
FIELDS = ("clean", "corrupted", "target", "foil")


class PromptSetError(PromptError):
    """A prompt-set file or template request that cannot be used; the message names file:line."""


@dataclass(frozen=True)
class PromptRow:
    """One row: the clean prompt, its corrupted counterpart ("" when none), the target and foil tokens."""

    clean: str
    corrupted: str = ""
    target: str = ""
    foil: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"clean": self.clean, "corrupted": self.corrupted, "target": self.target, "foil": self.foil}


@dataclass(frozen=True)
class PromptSet:
    """A named, frozen, hashable set of rows; `source` says where it came from (file or template)."""

    name: str
    rows: tuple[PromptRow, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.rows:
            raise PromptSetError(f"prompt set {self.name!r} has no rows")
        if len(self.rows) > MAX_ROWS:
            raise PromptSetError(f"prompt set {self.name!r} has {len(self.rows)} rows (limit {MAX_ROWS})")
        object.__setattr__(self, "rows", tuple(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "rows": [row.to_dict() for row in self.rows]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PromptSet:
        """Rebuild a set from `to_dict` output; PromptSetError on anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise PromptSetError("a prompt set must be a JSON object with a list of rows")
        rows = tuple(_row(item, f"row {i + 1}") for i, item in enumerate(data["rows"]))
        return PromptSet(name=str(data.get("name", "")), rows=rows, source=str(data.get("source", "")))

    def column(self, field: str) -> list[str]:
        return [getattr(row, field) for row in self.rows]


def _row(item: Any, where: str) -> PromptRow:
    if not isinstance(item, dict):
        raise PromptSetError(f"{where}: expected an object with fields {', '.join(FIELDS)}")
    unknown = set(item) - set(FIELDS)
    if unknown:
        raise PromptSetError(f"{where}: unknown field(s) {sorted(unknown)}")
    values = {}
    for field in FIELDS:
        value = item.get(field, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise PromptSetError(f"{where}: {field} must be a string")
        if len(value) > MAX_PROMPT_CHARS:
            raise PromptSetError(f"{where}: {field} is longer than {MAX_PROMPT_CHARS} characters")
        values[field] = value
    if not values["clean"].strip():
        raise PromptSetError(f"{where}: clean prompt is empty")
    return PromptRow(**values)


def load_prompt_set(path: str | Path, name: str | None = None) -> PromptSet:
    """Read a JSONL (one object per line) or CSV (header clean,corrupted,target,foil) file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PromptSetError(f"{path}: file is {size} bytes (limit {MAX_FILE_BYTES})")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptSetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PromptSetError(f"{path}: not UTF-8 text") from None
    rows: list[PromptRow] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "clean" not in reader.fieldnames:
            raise PromptSetError(f"{path}:1: CSV header must name the columns {', '.join(FIELDS)}")
        try:
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:
                    raise PromptSetError(f"{where}: more cells than header columns")
                rows.append(_row(dict(record), where))
                if len(rows) > MAX_ROWS:
                    raise PromptSetError(f"{where}: more than {MAX_ROWS} rows")
        except csv.Error as exc:
            raise PromptSetError(f"{path}:{reader.line_num}: {exc}") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptSetError(f"{where}: invalid JSON ({exc.msg})") from None
            rows.append(_row(item, where))
            if len(rows) > MAX_ROWS:
                raise PromptSetError(f"{where}: more than {MAX_ROWS} rows")
    if not rows:
        raise PromptSetError(f"{path}: no rows")
    return PromptSet(name=name or path.stem, rows=tuple(rows), source=str(path))


# ---------------------------------------------------------------------------- templates

# The IOI paper's templates (Wang et al. 2022), with {A} the indirect object, {B} the subject; the
# ABBA order swaps the first two names. The prompt ends before the answer.
IOI_TEMPLATES: tuple[str, ...] = (
    "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} had a lot of fun at the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} were working at the {PLACE}. {B} decided to give a {OBJECT} to",
    "Then, {B} and {A} were thinking about going to the {PLACE}. {B} wanted to give a {OBJECT} to",
    "Then, {B} and {A} had a long argument, and afterwards {B} said to",
    "After {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give the {OBJECT} to",
    "While {B} and {A} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "While {B} and {A} were commuting to the {PLACE}, {B} gave a {OBJECT} to",
    "After the lunch, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Afterwards, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} had a long argument. Afterwards {B} said to",
    "The {PLACE} {B} and {A} went to had a {OBJECT}. {B} gave it to",
    "Friends {B} and {A} found a {OBJECT} at the {PLACE}. {B} gave it to",
)
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Lisa", "Anna", "Paul",
    "Mark", "Sarah", "David", "Michael", "Alice", "Bob", "Emma", "Jack", "Laura", "Peter", "Rose",
    "Sam", "Ben", "Jane", "George", "Max", "Tim", "Eric",
)
IOI_PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house",
                               "station")
IOI_OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink",
                                "snack")

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("England", "London"), ("China", "Beijing"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Portugal", "Lisbon"),
    ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
)


def single_token_words(tokenizer, words: tuple[str, ...] | list[str]) -> list[str]:
    """The words that are one token when they follow a space (" Mary") in `tokenizer`."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1]


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def ioi_set(tokenizer, n: int = 20, seed: int = 0, templates: tuple[str, ...] = IOI_TEMPLATES,
            names: tuple[str, ...] = IOI_NAMES) -> PromptSet:
    """IOI rows in both name orders (ABBA and BABA alternate). Clean: "...{S} gave a drink to" with
    target " IO" and foil " S"; corrupted: the second subject mention replaced by the IO name (the
    demo pair's corruption), so the rows of a pair have the same number of tokens."""
    if not 1 <= n <= MAX_ROWS:
        raise PromptSetError(f"an IOI set needs 1..{MAX_ROWS} rows, got {n}")
    usable = single_token_words(tokenizer, names)
    if len(usable) < 2:
        raise PromptSetError("the tokenizer has fewer than two single-token names for IOI prompts")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        template = templates[i % len(templates)]
        io_name, s_name = rng.sample(usable, 2)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        if i % 2 == 0:  # BABA: subject first
            first, second = s_name, io_name
        else:  # ABBA: indirect object first
            first, second = io_name, s_name
        head = template.replace("{B} and {A}", f"{first} and {second}", 1)
        clean = head.replace("{B}", s_name).replace("{PLACE}", place).replace("{OBJECT}", obj)
        corrupted = head.replace("{B}", io_name).replace("{PLACE}", place).replace("{OBJECT}", obj)
        rows.append(PromptRow(clean, corrupted, " " + io_name, " " + s_name))
    return PromptSet(name=f"ioi-{n}", rows=tuple(rows), source=f"template:ioi n={n} seed={seed}")


def capitals_set(tokenizer, n: int = 10, seed: int = 0) -> PromptSet:
    """"The capital of X is" -> " capital", foil and corruption from another country of the table
    whose prompt has the same number of tokens."""
    rng = random.Random(seed)
    pairs = list(CAPITALS)
    rows = []
    for i in range(min(n, len(pairs))):
        country, capital = pairs[i]
        clean = f"The capital of {country} is"
        others = [(c, k) for c, k in pairs if c != country
                  and _n_tokens(tokenizer, f"The capital of {c} is") == _n_tokens(tokenizer, clean)
                  and tokenizer(" " + k, add_special_tokens=False).input_ids[0]
                  != tokenizer(" " + capital, add_special_tokens=False).input_ids[0]]
        if not others:
            continue
        other, other_capital = rng.choice(others)
        rows.append(PromptRow(clean, f"The capital of {other} is", " " + capital, " " + other_capital))
    if not rows:
        raise PromptSetError("no capital pair tokenizes to prompts of equal length")
    return PromptSet(name=f"capitals-{len(rows)}", rows=tuple(rows), source=f"template:capitals n={n} seed={seed}")


def induction_set(tokenizer, n: int = 10, length: int = 8, seed: int = 0) -> PromptSet:
    """Random sequences of single-token words seen twice: clean "A B C ... A B" -> target the next
    repeated word; corrupted replaces the first half by other random words (no earlier occurrence
    to copy); foil is a word from the sequence that is not the answer."""
    if length < 3:
        raise PromptSetError("induction sequences need at least 3 tokens")
    vocab = [w for w in _word_pool(tokenizer) if w]
    if len(vocab) < 2 * length + 2:
        raise PromptSetError("the tokenizer has too few single-token words for induction prompts")
    rng = random.Random(seed)
    rows: list[PromptRow] = []
    attempts = 0
    while len(rows) < n and attempts < 50 * n:
        attempts += 1
        words = rng.sample(vocab, 2 * length)
        first, other = words[:length], words[length:]
        cut = length - 1
        clean = "".join(" " + w for w in first + first[:cut])
        corrupted = "".join(" " + w for w in other + first[:cut])
        expected = 2 * length - 1
        if _n_tokens(tokenizer, clean) != expected or _n_tokens(tokenizer, corrupted) != expected:
            continue
        # The leading space stays: every word, the first included, is then the same " word" token.
        rows.append(PromptRow(clean, corrupted, " " + first[cut], " " + first[0]))
    if not rows:
        raise PromptSetError("could not build induction prompts that tokenize one word per token")
    return PromptSet(name=f"induction-{len(rows)}", rows=tuple(rows),
                     source=f"template:induction n={n} length={length} seed={seed}")


_WORDS = ("apple", "river", "stone", "cloud", "green", "table", "music", "horse", "paper", "light",
          "glass", "night", "water", "field", "chair", "bread", "house", "smile", "train", "money",
          "dream", "heart", "ocean", "plant", "sugar", "tiger", "clock", "phone", "storm", "grass",
          "the", "and", "cat", "dog", "sat", "mat", "sun", "moon", "book", "park", "fox", "red",
          "blue", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _word_pool(tokenizer) -> list[str]:
    """Common words that are one token after a space, then any other vocabulary entries that are
    " " + letters and tokenize back to themselves (small tokenizers have few common words)."""
    pool = single_token_words(tokenizer, _WORDS)
    if len(pool) >= 64:
        return pool
    seen = set(pool)
    for token_id in range(min(len(tokenizer), 50_000)):
        text = tokenizer.decode([token_id])
        word = text[1:]
        if (text.startswith(" ") and len(word) >= 2 and word.isalpha() and word not in seen
                and tokenizer(text, add_special_tokens=False).input_ids == [token_id]):
            pool.append(word)
            seen.add(word)
    return pool


# ---------------------------------------------------------------------------- in-context tasks

ICL_TASKS: tuple[str, ...] = ("antonyms", "country-capital", "uppercase")
ICL_WORDS_FILE = Path(__file__).with_name("icl_words.json")
MAX_ICL_WORDS_BYTES = 256 * 1024
MAX_SHOTS = 64
DEFAULT_SHOTS = 10


def icl_pairs(task: str) -> list[tuple[str, str]]:
    """The (input, answer) word pairs of an in-context task, from the word lists shipped with the package."""
    if task not in ICL_TASKS:
        raise PromptSetError(f"unknown in-context task {task!r} (known: {', '.join(ICL_TASKS)})")
    try:
        if ICL_WORDS_FILE.stat().st_size > MAX_ICL_WORDS_BYTES:
            raise PromptSetError(f"{ICL_WORDS_FILE.name} is larger than {MAX_ICL_WORDS_BYTES} bytes")
        data = json.loads(ICL_WORDS_FILE.read_text(encoding="utf-8"))
        pairs = data["tasks"][task]
        return [(str(x), str(y)) for x, y in pairs]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PromptSetError(f"the word lists of the package are damaged ({ICL_WORDS_FILE.name}: {exc})") from None


def zero_shot_prompt(clean: str) -> str:
    """The query alone (the last line of an in-context prompt): "hot: cold\nfast:" -> "fast:"."""
    return clean.rsplit("\n", 1)[-1]


def _icl_prompt(shots: list[tuple[str, str]], query: str) -> str:
    return "".join(f"{x}: {y}\n" for x, y in shots) + f"{query}:"


def _derangement(rng: random.Random, answers: list[str]) -> list[str]:
    """`answers` reordered so that no shot keeps its own answer (where the words allow it)."""
    if len(set(answers)) < 2:
        return list(answers)
    for _ in range(100):
        moved = rng.sample(answers, len(answers))
        if all(a != b for a, b in zip(moved, answers)):
            return moved
    return answers[1:] + answers[:1]


def icl_set(tokenizer, task: str, n: int = 20, shots: int = DEFAULT_SHOTS, seed: int = 0,
            pairs: list[tuple[str, str]] | None = None) -> PromptSet:
    """In-context rows of `task` (Todd et al. 2024): `shots` lines "input: answer" then the query
    "input:"; target " answer" (one token after a space: pairs whose input or answer are not one
    token are left out), foil " input" (copying the query is the usual wrong answer); corrupted: the
    same prompt with the shots' answers permuted (shuffled labels, the query unchanged), the prompts
    an average indirect effect patches into. shots 0: zero-shot rows ("input:", no corrupted)."""
    if not 1 <= n <= MAX_ROWS:
        raise PromptSetError(f"an in-context set needs 1..{MAX_ROWS} rows, got {n}")
    if not 0 <= shots <= MAX_SHOTS:
        raise PromptSetError(f"an in-context prompt takes 0..{MAX_SHOTS} shots, got {shots}")
    words = icl_pairs(task) if pairs is None else pairs
    inputs = set(single_token_words(tokenizer, [x for x, _ in words]))
    answers = set(single_token_words(tokenizer, [y for _, y in words]))
    usable = [(x, y) for x, y in words if x in inputs and y in answers]
    usable = list({x: (x, y) for x, y in usable}.values())  # one answer per input
    if len(usable) < shots + 1:
        raise PromptSetError(f"{task}: the tokenizer has {len(usable)} pairs of single-token words, "
                             f"{shots} shots need {shots + 1}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = rng.sample(usable, shots + 1)
        examples, (query, answer) = chosen[:-1], chosen[-1]
        clean = _icl_prompt(examples, query)
        moved = _derangement(rng, [y for _, y in examples])
        corrupted = _icl_prompt([(x, y) for (x, _), y in zip(examples, moved)], query) if shots else ""
        rows.append(PromptRow(clean, corrupted, " " + answer, " " + query))
    name = f"{task}-{n}" if shots == DEFAULT_SHOTS else f"{task}-{n}-{shots}shot"
    return PromptSet(name=name, rows=tuple(rows),
                     source=f"template:{task} n={n} seed={seed} shots={shots}")


TEMPLATES: tuple[str, ...] = ("ioi", "capitals", "induction", *ICL_TASKS)


def template_set(kind: str, tokenizer, n: int = 20, seed: int = 0, shots: int = DEFAULT_SHOTS) -> PromptSet:
    """A built-in set by name: "ioi", "capitals", "induction" or an in-context task (`ICL_TASKS`,
    with `shots` examples per prompt; the other templates ignore it)."""
    if kind == "ioi":
        return ioi_set(tokenizer, n=n, seed=seed)
    if kind == "capitals":
        return capitals_set(tokenizer, n=n, seed=seed)
    if kind == "induction":
        return induction_set(tokenizer, n=n, seed=seed)
    if kind in ICL_TASKS:
        return icl_set(tokenizer, kind, n=n, shots=shots, seed=seed)
    raise PromptSetError(f"unknown template set {kind!r} (known: {', '.join(TEMPLATES)})")
