"""The protected gendered words of `--protect-set`, for the harness scripts that need them
(subject-separability.py, last-token-separability.py). They are read from
fixtures/data/protected/sets.json, which the library's own sets regenerate
(tests/occupations.rs `protected_sets_file_lists_the_library_sets`), so the rules live in one
place (src/edit/probe/words.rs `protect_set_words`). Standard library only."""
import json
import os

SETS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "fixtures/data/protected/sets.json"
)


def protected_words(protect_set="roles"):
    """Sorted protected words of `protect_set` (pairs, persons, roles, extended): the
    equalize-pair words that name one person, plus the set's files, minus every profession."""
    with open(SETS) as f:
        return json.load(f)[protect_set]
