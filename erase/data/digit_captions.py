"""Captions of the bundled text-to-image digits model: training templates and held-out paraphrases.

A caption names the digit as a word ("seven") or a numeral ("7"). The model is trained on
TRAIN_TEMPLATES only; HELDOUT_TEMPLATES use words it never saw and serve only to check that an
erasure (or the model itself) generalises to prompts it was not trained or erased on.
"""

from __future__ import annotations

import csv
import io

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_TEMPLATES = (
    "a handwritten {d}",
    "the digit {d}",
    "{d}",
    "a picture of the digit {d}",
    "an image of a {d}",
    "a {d} written by hand",
    "a black and white {d}",
    "digit {d}",
)

HELDOUT_TEMPLATES = (
    "a scribbled {d} on paper",
    "someone wrote the numeral {d}",
    "a sketch showing {d}",
    "my favourite number is {d}",
    "the symbol for {d} in ink",
    "a tiny pixelated {d}",
)


def digit_forms(digit: int) -> tuple[str, str]:
    """The two ways a caption names a digit: its word and its numeral."""
    return DIGIT_WORDS[digit], str(digit)


def captions(digit: int, templates=TRAIN_TEMPLATES) -> list[str]:
    """Every template with the digit as a word and as a numeral (word first)."""
    return [t.format(d=form) for t in templates for form in digit_forms(digit)]


def caption_words(templates=TRAIN_TEMPLATES + HELDOUT_TEMPLATES) -> list[str]:
    """Every word of every caption (the tokenizer learns its merges from these)."""
    words = []
    for digit in range(10):
        for text in captions(digit, templates):
            words.extend(text.split())
    return words


def prompt_csv(digits, templates=HELDOUT_TEMPLATES, seed: int = 0) -> str:
    """A labelled prompt CSV (prompt, seed, label) for `erase generate` / `erase evaluate classifier`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["prompt", "seed", "label"])
    row = 0
    for digit in digits:
        for text in captions(digit, templates):
            writer.writerow([text, seed + row, digit])
            row += 1
    return out.getvalue()


# Everyday words the tokenizer learns as whole tokens, so that common words in a user's prompt do not
# split into pieces that happen to spell a digit ("phone" -> "ph" + "one"). The text encoder is
# trained to ignore them when they are inserted into captions.
COMMON_WORDS = (
    "a an the of in on at by with and or for to from into over under near this that these those is are was "
    "be been it its his her their my your our some any every each no not very small large big little tiny "
    "huge old new black white grey gray red blue green yellow dark light bright bold thin thick round sharp "
    "clean messy neat simple plain fancy photo photograph image picture drawing painting sketch illustration "
    "art artwork style poster print card page book paper notebook sheet board wall screen phone sign label "
    "pen pencil ink chalk marker brush paint crayon stroke line lines shape shapes form letter letters word "
    "words number numbers numeral symbol character glyph figure font text writing written drawn painted "
    "printed typed hand hands handwriting child kid student teacher person man woman boy girl people someone "
    "anyone everyone none done gone alone stone bone tone zone cone throne weight height freight canine "
    "heroes hero day night morning evening today school class lesson math count counting score price date "
    "time clock house street road city room table desk window door tree flower sun moon star sky water "
    "cat dog bird fish horse car bus train ship plane high quality detailed realistic cartoon vintage modern "
    "retro digital analog scanned blurry centered close up view shot background foreground "
    "showing shows show depicting depicts made make draw write wrote scribbled scribble doodle doodled "
    "favourite favorite beautiful ugly cute lovely nice good bad best worst first last only just also"
).split()


def tokenizer_words() -> list[str]:
    """The words the bundled tokenizer learns as whole tokens: every caption word, then COMMON_WORDS."""
    return caption_words() + list(COMMON_WORDS)


def digits_named(prompt: str) -> set[int]:
    """The digits a prompt names, as a word or a numeral ("a handwritten seven" -> {7})."""
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    return {d for d in range(10) if any(w in digit_forms(d) for w in words)}


def concept_prompts(forget_digits, anchor_digit: int) -> dict:
    """Prompt sets for erasing digit concepts from the bundled text-to-image model.

    forget: every training caption of the forgotten digits; anchor: the same captions naming the
    anchor digit (row i of one maps to row i of the other); remain: one caption per template and
    form for every other digit (anchor included), digits interleaved so that any prefix of the list
    covers them all; paraphrase: the held-out captions of the forgotten digits (evaluation only).
    Each set is a list of (prompt, label).
    """
    forget_digits = sorted(set(int(d) for d in forget_digits))
    if anchor_digit in forget_digits:
        raise ValueError(f"the anchor digit {anchor_digit} is one of the forgotten digits")
    others = [d for d in range(10) if d not in forget_digits]
    forget = [(text, d) for d in forget_digits for text in captions(d)]
    anchor = [(text, anchor_digit) for _ in forget_digits for text in captions(anchor_digit)]
    per_digit = {d: captions(d) for d in others}
    remain = [(per_digit[d][i], d) for i in range(len(per_digit[others[0]])) for d in others]
    paraphrase = [(text, d) for d in forget_digits for text in captions(d, HELDOUT_TEMPLATES)]
    return {"forget": forget, "anchor": anchor, "remain": remain, "paraphrase": paraphrase}


def swap_digit(prompt: str, digit: int) -> str:
    """The prompt with the digit it names replaced by `digit`, word for word and numeral for numeral."""
    out = []
    for word in prompt.split():
        core = word.strip(",.!?;:")
        for d in range(10):
            word_form, numeral = digit_forms(d)
            if core.lower() == word_form:
                word = word.replace(core, digit_forms(digit)[0])
            elif core == numeral:
                word = word.replace(core, digit_forms(digit)[1])
        out.append(word)
    return " ".join(out)
