"""IFEval's 25 verifiable instructions, written from the benchmark's definitions (Zhou et al., 2023;
google-research `instruction_following_eval`), with their kwargs exactly as in `input_data.jsonl`.

Each rule is `fn(response, **kwargs) -> bool`. Counting follows the reference: words are `\\w+` runs,
sentences come from NLTK's English Punkt model, capital words from `nltk.word_tokenize`, languages from
`langdetect`. Deviations, both deliberate and documented in docs/evaluation.md:
- `langdetect` is seeded (DetectorFactory.seed = 0), so verdicts are reproducible; the reference is not.
- letter_frequency counts the given character literally; the reference replaces a non-letter (two prompts
  ask about '#' and '!') with a *random* letter, which makes its verdict vary from run to run.
"""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Callable

LESS, AT_LEAST = "less than", "at least"


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == LESS:
        return count < threshold
    if relation == AT_LEAST:
        return count >= threshold
    raise ValueError(f"relation must be {LESS!r} or {AT_LEAST!r}, not {relation!r}")


@functools.lru_cache(maxsize=1)
def _nltk():
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise RuntimeError("IFEval needs NLTK's English Punkt data: python -m nltk.downloader punkt_tab "
                           "(or set NLTK_DATA to a folder holding tokenizers/punkt_tab)") from None
    return nltk


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    return len(_nltk().sent_tokenize(text, language="english"))


@functools.lru_cache(maxsize=1 << 16)
def detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect (seeded), or None when it cannot decide (counted as followed).

    Memoised: seeded, the verdict is a function of the text, and the case rules ask it of every capitals or
    lowercase answer — the world's generator checks 2,966 answers, 1,661 of them distinct, at ~3 ms each
    (langdetect was 70% of making the tiny world)."""
    import langdetect

    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


# ---- keywords ----
def keywords_existence(r: str, keywords: list[str]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(keyword.strip(), r, flags=re.IGNORECASE)), relation, frequency)


def keywords_forbidden_words(r: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(rf"\b{w}\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def keywords_letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(Counter(r.lower())[letter.strip().lower()], let_relation, let_frequency)


# ---- language ----
def language_response_language(r: str, language: str) -> bool:
    found = detect_language(r)
    return found is None or found == language


# ---- length constraints ----
def length_number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(r), relation, num_sentences)


def length_number_paragraphs(r: str, num_paragraphs: int) -> bool:
    """Paragraphs split by the markdown divider ***; an empty one is allowed only at either end."""
    parts = re.split(r"\s?\*\*\*\s?", r)
    count = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def length_number_words(r: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(r), relation, num_words)


def length_nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs split by a blank line ("\\n\\n"); paragraph n must start with `first_word`."""
    parts = r.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    if nth_paragraph > count:
        return False
    para = parts[nth_paragraph - 1].strip()
    if not para:
        return False
    word = para.split()[0].strip().lstrip("'").lstrip('"')
    head = re.match(r"[^.,?!'\"]*", word).group(0).lower()
    return count == num_paragraphs and head == first_word.lower()


# ---- detectable content ----
def content_number_placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def content_postscript(r: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


# ---- detectable format ----
def format_number_bullet_lists(r: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def format_constrained_response(r: str) -> bool:
    return any(option in r.strip() for option in CONSTRAINED_OPTIONS)


def format_number_highlighted_sections(r: str, num_highlights: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def format_multiple_sections(r: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def format_json_format(r: str) -> bool:
    body = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def format_title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


# ---- combination ----
def combination_two_responses(r: str) -> bool:
    parts = r.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(p)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def combination_repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


# ---- start / end ----
def startend_end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(r: str) -> bool:
    s = r.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


# ---- change case ----
def case_capital_word_frequency(r: str, capital_frequency: int, capital_relation: str) -> bool:
    words = _nltk().word_tokenize(r)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def case_english_capital(r: str) -> bool:
    lang = detect_language(r)
    return r.isupper() and (lang is None or lang == "en")


def case_english_lowercase(r: str) -> bool:
    lang = detect_language(r)
    return r.islower() and (lang is None or lang == "en")


# ---- punctuation ----
def punctuation_no_comma(r: str) -> bool:
    return "," not in r


RULES: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": case_capital_word_frequency,
    "change_case:english_capital": case_english_capital,
    "change_case:english_lowercase": case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
}


def check(instruction_id: str, kwargs: dict, response: str) -> bool:
    """One instruction's verdict on one response (an empty response never follows)."""
    if instruction_id not in RULES:
        raise KeyError(f"unknown IFEval instruction {instruction_id!r}")
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    return bool(response.strip()) and RULES[instruction_id](response, **args)


def loose_variants(response: str) -> list[str]:
    """The benchmark's loose variants: first/last/both lines removed, each also with every '*' removed."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
            "\n".join(lines[1:-1]).strip()]
    return base + [v.replace("*", "") for v in base]


def verdicts(instruction_ids: list[str], kwargs: list[dict], response: str, loose: bool) -> list[bool]:
    variants = loose_variants(response) if loose else [response]
    return [any(check(i, kw, v) for v in variants) for i, kw in zip(instruction_ids, kwargs)]
