"""The COCO caption tokenization in pure Python: what pycocoevalcap's PTBTokenizer gives, without Java.

pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` over the captions and then
drops the tokens in its ``PUNCTUATIONS`` list. This module reproduces that lexer's decisions for what captions
contain - words, hyphenated words, numbers, clitics ('s n't 're ...), assimilations (cannot -> can not, gonna ->
gon na), abbreviations that keep their period (st. mr. u.s.), brackets (-lrb-), quotes, dashes, ellipses and
symbols - checked against the Java tokenizer in tests/evaluate. Rare constructs (SGML, smileys, the lexer's
context rules for a few abbreviations before commas) may tokenize differently; on them the metrics move little.
"""

from __future__ import annotations

import re

# pycocoevalcap's PUNCTUATIONS: tokens dropped after tokenizing. The Java tokenizer lowercases its bracket tokens
# (-LRB- -> -lrb-) before this filter, so those four uppercase entries never match and brackets stay as tokens.
DROPPED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# PTB escapes brackets (normalizeParentheses, normalizeOtherBrackets).
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

# Characters the lexer reads as another (ptb3Escaping: unicode quotes to LaTeX-style ASCII, dashes to --,
# the ellipsis character to ..., currencies and fractions to their PTB spelling).
CHARACTERS = {
    "\u201c": " `` ", "\u201d": " '' ", "\u201e": " `` ", "\u2018": "`", "\u2019": "'", "\u201b": "`",
    "\u2014": " -- ", "\u2013": " -- ", "\u2012": " -- ", "\u2015": " -- ", "\u2026": " ... ",
    "\u00a3": " # ", "\u20ac": " $ ", "\u00a2": " cents ", "\u00bd": " 1/2 ", "\u00bc": " 1/4 ", "\u00be": " 3/4 ",
}  # fmt: skip
_CHARACTERS = re.compile("|".join(map(re.escape, CHARACTERS)))

# Words whose final period is part of the token, whatever follows (CoreNLP 3.4.1's ABBREV1/ABBREV2 lists, as its
# lexer applies them to lowercased text: titles, months, days, states, company words, street words).
ABBREVIATIONS = frozenset([
    "mr", "mrs", "ms", "dr", "jr", "sr", "st", "mt", "ft", "prof", "gen", "col", "lt", "sgt", "capt", "gov", "sen",
    "rep", "rev", "hon", "pres", "messrs", "mme", "mlle", "adm", "brig", "maj", "cpl", "pvt", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "tues", "wed", "thu", "thurs",
    "fri", "ala", "ariz", "calif", "colo", "conn", "ct", "dak", "fla", "ga", "ind", "kan", "kans", "ky", "md",
    "mich", "minn", "mo", "mont", "neb", "nev", "okla", "penn", "tenn", "va", "vt", "wis", "wisc", "wyo", "co",
    "corp", "inc", "ltd", "bros", "plc", "ave", "blvd", "rd", "dept", "univ", "assn", "vs", "etc", "est", "cf", "al",
    "ph", "sq",
])  # fmt: skip
# State abbreviations that are also words: abbreviations only when capitalized ("Mass." but "mass.").
CAPITALIZED_ABBREVIATIONS = frozenset(["mass", "wash", "tex", "ill", "miss", "pa", "la", "ore", "del", "ark", "az"])
# Abbreviations that keep their period only before a number ("no. 5", "fig. 3").
NUMBER_ABBREVIATIONS = frozenset(["no", "fig", "figs", "nos"])

# Assimilations the lexer splits in two (``cannot`` -> ``can not``), with the length of their second part.
ASSIMILATIONS = {"cannot": 3, "gonna": 2, "gotta": 2, "wanna": 2, "gimme": 2, "lemme": 2}  # letters of the second
# Words with an apostrophe the lexer keeps whole although its general rules would split them.
APOSTROPHE_WORDS = frozenset(["nor'easter", "li'l", "ev'ry", "nat'l", "c'mon", "e'er", "o'er", "ne'er"])

_L = r"[^\W\d_]"  # a letter
_A = r"[^\W_]"  # a letter or digit
_NUMBER = r"(?:\d+(?:[.,:/]\d+)+|\.\d+)"  # 1,000 3.5 3:30 24/7 .5 (a plain 12 is an alphanumeric run)
_WORD = rf"{_A}+(?:_{_A}+)*(?:[.!?]{_L}{_A}*)*"  # dogs, 3d, under_score, hat.another (no final period)
_PART = rf"(?:{_NUMBER}|{_WORD})"
# The lexer's rules that matter for captions. As in JFlex, the longest match wins, the earlier rule on a tie.
_RULES = {
    "url": r"(?:https?|ftp)://[^\s\"<>]*[^\s\"<>.,;:!?'`)\]}]",
    "email": r"[\w.+-]+@\w[\w-]*(?:\.[\w-]+)+",
    "handle": rf"[@#]{_L}\w*",  # @home, #tag stay whole
    "company": r"[A-Z]+(?:&[A-Z]+)+",  # AT&T, S&P (capitals only: a&b is three tokens)
    "dropped_g": r"(?i:ol|somethin|dunkin)'",  # ol', somethin' keep their apostrophe
    "acronym": rf"{_L}(?:\.{_L})*\.",  # u.s. e.g. a.m. and single letters: x.
    "abbreviation": rf"{_L}+\.",  # a word and its period: one token only for the listed words (_abbreviation)
    "signed": r"[-+]\d+(?:[.,:/]\d+)*",  # -5 +5: a sign the lexer keeps
    "slashed": rf"{_A}+(?:/{_A}+){{1,2}}",  # red/blue
    "thing": rf"{_PART}(?:-{_PART})*",  # words, numbers, hyphenated words: 10-year-old, 3.5-inch
    "apostrophe": r"(?i:'n'|'(?:n|em|cause|till?|\d0s)(?![^\W_]))",  # 'cause 'em 'til 'n' '90s
    "feet_inches": r"(?<=\d)'\d\d(?![^\W_])",  # 5'10 -> 5 '10 (after a digit only: '10-year-old is a quote)
    "apostrophe_t": r"(?i:'t)(?=(?i:is|was)(?![^\W_]))",  # 'tis -> 't is
    "y_apostrophe": rf"(?i:[jy]')(?={_L})",  # y'all -> y' all, j'ai -> j' ai
    "clitic": r"(?i:'(?:s|m|d|re|ve|ll)|n't)(?![^\W_])",
    "ellipsis": r"\.\.\.+",
    "marks": r"[?!]+",  # ?! stays one token (and, not being in pycocoevalcap's list, is kept)
    "dashes": r"--+|-",
    "doublequote": r"\"|``|''",
    "underscores": r"_+",
    "ampersand": r"&amp;",
    "other": r"\S",
}
_COMPILED = [(name, re.compile(pattern)) for name, pattern in _RULES.items()]
_APOSTROPHE_TAIL = re.compile(rf"'({_L}+)")
_CLITIC = re.compile(_RULES["clitic"])
_PLAIN = re.compile(r"[a-z0-9]+")  # most of a caption: a chunk that is one token as it stands
# CoreNLP 3.4.1 ends a sentence after a one-letter "x." when one space and a capitalized word of this list follow
# (with more text after it), or "Mr."; otherwise the letter keeps its period.
SENTENCE_STARTS = ["the", "a", "an", "it", "he", "she", "we", "they", "you", "in", "this", "but", "that", "then", "if",
    "as", "at", "there", "here", "what", "when", "her", "their", "our", "some", "many", "one", "after", "since",
    "while", "so", "yet", "now", "however"]  # fmt: skip
_SENTENCE_START = re.compile(
    " (?:" + "|".join(word[0].upper() + f"(?i:{word[1:]})" for word in SENTENCE_STARTS) + r") \S| Mr\."
)


def ptb_tokenize(caption: str) -> list[str]:
    """The tokens pycocoevalcap's PTBTokenizer leaves of one caption: lowercased, punctuation dropped."""
    return [token for token in (t.lower() for t in _lex(caption)) if token not in DROPPED]


def tokenize_captions(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """``{id: [caption, ...]}`` -> ``{id: ["tok tok ...", ...]}``: what pycocoevalcap's ``PTBTokenizer.tokenize``
    returns (space-joined tokens), for captions given as plain strings."""
    return {key: [" ".join(ptb_tokenize(text)) for text in texts] for key, texts in captions.items()}


def _lex(text: str) -> list[str]:
    """The lexer's tokens, in their original case (the caller lowercases, as ``-lowerCase`` does on output)."""
    # Characters beyond the Basic Multilingual Plane (emoji) are "untokenizable" to the Java lexer: it deletes them.
    text = "".join(ch for ch in text if ord(ch) <= 0xFFFF)
    text = _CHARACTERS.sub(lambda m: CHARACTERS[m.group()], text)
    tokens: list[str] = []
    for found in re.finditer(r"\S+", text):
        chunk = found.group()
        if _PLAIN.fullmatch(chunk) and chunk not in ASSIMILATIONS:
            tokens.append(chunk)
        else:
            _lex_chunk(chunk, text[found.end() :], tokens)
    return tokens


def _lex_chunk(chunk: str, following: str, tokens: list[str]) -> None:
    """Append the tokens of ``chunk`` (text between spaces); ``following`` is the text after it, for the rules
    that look past a space (a period before a number or before a sentence's first word)."""
    position = 0
    while position < len(chunk):
        kind, end = "other", position
        for name, pattern in _COMPILED:
            match = pattern.match(chunk, position)
            if match is not None and match.end() > end:
                kind, end = name, match.end()
        token = chunk[position:end]
        after = chunk[end:] or following
        if kind == "abbreviation" and not _is_abbreviation(token[:-1], after):
            kind, end = "thing", end - 1  # the period is a token of its own
            token = chunk[position:end]
        elif kind == "acronym" and len(token) == 2 and _SENTENCE_START.match(after):
            kind, end = "thing", end - 1  # "... letter a. The ...": the lexer takes the period as a sentence end
            token = chunk[position:end]
        if kind in ("thing", "slashed"):
            token, end = _apostrophe(chunk, token, end)
            cut = ASSIMILATIONS.get(token.lower())
            # A clitic after it keeps the word whole ("cannot's"): the lexer's word-before-clitic rule comes first.
            if cut is not None and not _CLITIC.match(chunk, end):  # can|not, gon|na
                tokens += [token[:-cut], token[-cut:]]
                position = end
                continue
        tokens.append(_spell(kind, token, chunk, position))
        position = end


def _is_abbreviation(word: str, after: str) -> bool:
    lower = word.lower()
    return (
        lower in ABBREVIATIONS
        or (lower in CAPITALIZED_ABBREVIATIONS and word[0].isupper())
        or (lower in NUMBER_ABBREVIATIONS and after.lstrip()[:1].isdigit())
    )


def _apostrophe(chunk: str, token: str, end: int) -> tuple[str, int]:
    """A word at an apostrophe, as the lexer cuts it: o'clock and ma'am stay whole; can't -> ca + n't."""
    tail = _APOSTROPHE_TAIL.match(chunk, end)
    if tail is None:
        return token, end
    if tail.group(1).lower() == "t" and token[-1:].lower() == "n" and len(token) > 1 and token.isalpha():
        return token[:-1], end - 1  # the n goes with 't
    if _keeps_apostrophe(token, tail.group(1)):
        return token + tail.group(), tail.end()
    return token, end


def _keeps_apostrophe(head: str, tail: str) -> bool:
    """CoreNLP 3.4.1's APOWORD: one letter (not i, j or y) then 2+ letters (o'clock, d'orsay), or a vowel on both
    sides (ma'am, shi'ite), or a listed word (li'l). A clitic ('s 're ...) never joins its word."""
    if f"{head}'{tail}".lower() in APOSTROPHE_WORDS:
        return True
    if not head.isalpha() or re.fullmatch(r"(?i:s|m|d|re|ve|ll|t)", tail):
        return False
    if len(head) == 1 and head.lower() not in "ijy" and len(tail) >= 2:
        return True
    return head[-1].lower() in "aeiouy" and tail[0].lower() in "aeiou"


def _spell(kind: str, token: str, chunk: str, position: int) -> str:
    """How the lexer writes a token (ptb3Escaping): brackets as -lrb-, a double quote as `` or '', ... as ..."""
    if token in BRACKETS:
        return BRACKETS[token]
    if kind == "doublequote" and token == '"':
        return "``" if position == 0 or chunk[position - 1] in "([{`" else "''"
    if kind == "ellipsis":
        return "..."
    if kind == "dashes":
        return "--" if len(token) > 1 else "-"
    if kind == "ampersand":
        return "&"
    return token
