"""The protected gendered words of `--protect-set` (src/edit/probe.rs `protect_set_words`),
for the harness scripts that need them (subject-separability.py, last-token-separability.py).
Standard library only."""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "fixtures/data")

# src/edit/probe.rs NOT_A_PERSON: equalize-pair words that do not name one person.
NOT_A_PERSON = set(
    "he she his her himself herself boys girls brothers sisters dads moms daughters sons fathers "
    "mothers females males gals dudes gentlemen ladies men women kings queens wives husbands "
    "granddaughters grandsons colt filly gelding mare convent monastery fraternity sorority "
    "estrogen testosterone fatherhood motherhood female male".split()
)

FILES = {
    "pairs": (),
    "persons": ("gendered_persons.json",),
    "roles": ("gendered_persons.json", "gendered_roles.json"),
    "extended": ("gendered_persons.json", "gendered_roles.json", "gendered_extended.json"),
}


def plain(w):
    return w != "" and all("a" <= c <= "z" for c in w) and w not in NOT_A_PERSON


def protected_words(protect_set="roles"):
    """Sorted protected words: the equalize pairs whose two words are plain, plus the set's
    files, minus every profession (so the definitional controls stay unseen)."""
    pro = {p[0] for p in json.load(open(f"{DATA}/bolukbasi_debiaswe/professions.json"))}
    words = set()
    for a, b in json.load(open(f"{DATA}/bolukbasi_debiaswe/equalize_pairs.json")):
        if plain(a) and plain(b):
            words |= {a, b}
    for f in FILES[protect_set]:
        words |= set(json.load(open(f"{DATA}/protected/{f}")))
    return sorted(words - pro)
