#!/usr/bin/env python3
"""Occupations and definitionally gendered person nouns from WordNet 3.0 that are in none of the
project's word lists, for data-scaling experiments (docs/findings.md section 6h: would more fit
words let a read-out tell stereotyped from definitional gender?). Standard library only.

    apt-get install wordnet-base     # Debian's WordNet 3.0 database (Princeton WordNet licence)
    harness/wordnet-words.py [--wordnet /usr/share/wordnet] > words.json

Rules (single lower-case words of letters only, so "The {} said that" names one person):
- male / female: the synset is a hyponym (transitively) of man.n.01, woman.n.01, male.n.02,
  female.n.02, boy.n.01 or girl.n.01; or its word ends in "woman" (female) or is the "-man"
  counterpart of such a word (male: policeman for policewoman); occupations ending in "man"
  count as male (craftsman, longshoreman), as the project's controls do;
- occupations: hyponyms (transitively) of worker.n.01 or professional.n.01 that are not gendered
  by the rules above and whose gloss names no gender (woman, man, female, male, girl, boy, wife,
  husband, mother, father);
- every word's first (most frequent) noun sense must be the synset that qualified it (no seal,
  drake or bird), names (capitalised lemmas, instances) and usage-labelled synsets (slang,
  disparagement, obscenity) are left out.
Left out: every word of fixtures/data (the 320 professions, the protected sets) and of
harness/wild-check.py (its words must stay unseen). Prints JSON {"occupations", "male", "female"}.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOTS_MALE = ["10287213", "09624168", "10285313"]  # man.n.01, male.n.02, boy.n.01
ROOTS_FEMALE = ["10787470", "09619168", "10129825"]  # woman.n.01, female.n.02, girl.n.01
ROOTS_OCCUPATION = ["09632518", "10480253"]  # worker.n.01, professional.n.01
GENDER_GLOSS = re.compile(r"\b(woman|women|man|men|female|male|girl|boy|wife|husband|mother|father)\b")


def read_nouns(path):
    """offset -> (lower-case words, hyponym offsets, gloss, usage-labelled). Capitalised lemmas
    (names) and instance hyponyms are left out."""
    syn = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            parts = head.split()
            offset, n_words = parts[0], int(parts[3], 16)
            words = [parts[4 + 2 * i] for i in range(n_words)]
            words = [w for w in words if w == w.lower()]
            i = 4 + 2 * n_words
            n_ptr = int(parts[i])
            hypo, usage = [], False
            for j in range(n_ptr):
                sym, target, pos = parts[i + 1 + 4 * j : i + 4 + 4 * j]
                if sym == "~" and pos == "n":
                    hypo.append(target)
                # Usage domains (slang, disparagement, obscenity, ...): not a neutral noun.
                usage |= sym == ";u"
            syn[offset] = (words, hypo, gloss.strip(), usage)
    return syn


def closure(syn, roots):
    seen, todo = set(), list(roots)
    while todo:
        o = todo.pop()
        if o in seen or o not in syn:
            continue
        seen.add(o)
        todo.extend(syn[o][1])
    return seen


def first_senses(path):
    """word -> the offset of its first (most frequent) noun sense."""
    first = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            first[parts[0]] = parts[-int(parts[2])]
    return first


def project_words():
    words = set()
    with open(os.path.join(HERE, "..", "fixtures/data/bolukbasi_debiaswe/professions.json")) as f:
        words |= {p[0].lower() for p in json.load(f)}
    with open(os.path.join(HERE, "..", "fixtures/data/protected/sets.json")) as f:
        for ws in json.load(f).values():
            words |= {w.lower() for w in ws}
    with open(os.path.join(HERE, "wild-check.py")) as f:
        src = f.read()
    for name in ("OCCUPATIONS", "MALE", "FEMALE"):
        block = src[src.index(f"\n{name} = [") :]
        block = block[: block.index("]")]
        words |= {w.lower() for w in re.findall(r'"([^"]+)"', block)}
    return words


def plain(w):
    return w.isalpha() and w.isascii() and len(w) > 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    a = ap.parse_args()
    syn = read_nouns(os.path.join(a.wordnet, "data.noun"))
    first = first_senses(os.path.join(a.wordnet, "index.noun"))
    known = project_words()
    male_syn, female_syn = closure(syn, ROOTS_MALE), closure(syn, ROOTS_FEMALE)
    occ_syn = closure(syn, ROOTS_OCCUPATION)
    all_words = {w for s in syn.values() for w in s[0]}

    def words_of(offsets):
        """Plain words of neutral synsets in `offsets` whose first noun sense is there too."""
        return {
            w
            for o in offsets
            if not syn[o][3]
            for w in syn[o][0]
            if plain(w) and first.get(w) in offsets
        }

    male = words_of(male_syn - female_syn)
    female = words_of(female_syn - male_syn)
    female |= {w for w in all_words if plain(w) and w.endswith("woman")}
    male |= {w[: -len("woman")] + "man" for w in female if w.endswith("woman")} & all_words
    both = male & female
    male, female = male - both, female - both
    neutral = {o for o in occ_syn if not GENDER_GLOSS.search(syn[o][2].split(";")[0])}
    occupations = words_of(neutral)
    # "-man" role nouns count as male by definition, as the project's controls do (cameraman,
    # foreman, patrolman).
    male |= {w for w in occupations if w.endswith("man") and not w.endswith("woman")}
    occupations -= male | female
    out = {
        "source": "Princeton WordNet 3.0 (Debian wordnet-base), harness/wordnet-words.py",
        "occupations": sorted(occupations - known),
        "male": sorted(male - known),
        "female": sorted(female - known),
    }
    json.dump(out, sys.stdout, indent=1)
    print(
        f"{len(out['occupations'])} occupations, {len(out['male'])} male, {len(out['female'])} female",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
