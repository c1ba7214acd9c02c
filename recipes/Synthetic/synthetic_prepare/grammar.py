"""The sentence grammar of the synthetic corpus, and its emotional phrases.

Authors
 * HarmoniFuse contributors
"""

from recipes.Synthetic.synthetic_prepare.settings import VALENCE_PHRASES

WORDS = {
    "name": "anna david maria peter laura james sarah thomas emma daniel "
    "julia michael olivia robert sophie george lucy henry alice oliver kate "
    "martin helen paul nina victor clara simon rachel frank",
    "pron": "she he we they you",
    # nouns whose plural is the noun plus "s"
    "noun": "dog cat bird horse car boat train book table chair window door "
    "river mountain lamp apple letter song story ship bottle ring jacket hat "
    "shoe bridge road tower cake pencil bag camera farmer doctor teacher "
    "painter singer sailor driver baker student neighbour flower picture "
    "basket blanket clock kettle ladder mirror pillow rabbit",
    "adj": "big small old young quiet heavy light bright dark warm cold "
    "clean dirty tall short long empty full strange famous tiny huge soft "
    "hard broken new round narrow wide rich poor lazy brave clever busy "
    "friendly gentle noisy simple fresh",
    "color": "red blue green yellow black white orange purple brown grey "
    "pink silver golden",
    "num": "two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
    "vt": "found painted opened closed carried watched cleaned moved bought "
    "sold visited followed pushed pulled lifted dropped washed fixed built "
    "borrowed noticed chased touched packed counted wanted liked cooked "
    "caught dried",
    "vi": "arrived laughed waited slept jumped danced smiled stopped "
    "returned walked travelled listened worked rested sang",
    "adv": "quickly slowly quietly loudly carefully early late again often "
    "rarely gently suddenly finally easily together outside inside nearby "
    "soon",
    "city": "london paris berlin madrid rome vienna dublin oslo tokyo cairo "
    "boston chicago denver sydney toronto lisbon prague athens moscow delhi "
    "canada brazil mexico spain norway egypt kenya japan india chile",
    "place": "park kitchen office station market library school museum "
    "hospital airport beach forest village harbour church theatre hotel "
    "cinema bakery farm garden",
    "time": "today yesterday tomorrow tonight",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
}
WORDS = {slot: tuple(words.split()) for slot, words in WORDS.items()}

# Slots are in angle brackets; "<noun>s" is the plural. 3 to 8 words each.
TEMPLATES = (
    "<name> <vi> <adv>",
    "<pron> <vi> <time>",
    "the <noun> is <adj>",
    "<name> <vt> the <noun>",
    "<name> lives in <city>",
    "<name> <vt> <num> <noun>s <time>",
    "<pron> <vt> <num> <color> <noun>s",
    "the <adj> <noun> <vi> <adv>",
    "<pron> <vi> in the <place> <time>",
    "the <adj> <noun> <vt> the <noun>",
    "<name> and <name> <vi> at the <place>",
    "<num> <adj> <noun>s <vi> near the <place>",
    "<pron> <vt> the <noun> in <city> <time>",
    "we will meet in <city> on <day>",
    "please put the <color> <noun> on the <noun>",
    "the <color> <noun> <vt> the <adj> <noun> <adv>",
)


def grammar_vocabulary(wording=False):
    """Returns every word that the sentence grammar can produce.

    Arguments
    ---------
    wording : bool
        Include the words of the emotional phrases (``VALENCE_PHRASES``).

    Returns
    -------
    set of str
        The distinct words.

    Example
    -------
    >>> len(grammar_vocabulary()) >= 200
    True
    >>> sorted(grammar_vocabulary(wording=True) - grammar_vocabulary())[:3]
    ['a', 'am', 'awful']
    """
    vocabulary = set()
    if wording:
        for phrases in VALENCE_PHRASES.values():
            for phrase in phrases:
                vocabulary.update(phrase.split())
    for template in TEMPLATES:
        for token in template.split():
            if token.startswith("<"):
                slot, plural = token[1:].split(">")
                vocabulary.update(word + plural for word in WORDS[slot])
            else:
                vocabulary.add(token)
    return vocabulary


def random_sentence(rng):
    """Draws one lower-case sentence of 3 to 8 words from the grammar.

    Arguments
    ---------
    rng : numpy.random.Generator
        The random generator.

    Returns
    -------
    str
        The sentence, words separated by single spaces.

    Example
    -------
    >>> import numpy as np
    >>> sentence = random_sentence(np.random.default_rng(0))
    >>> 3 <= len(sentence.split()) <= 8
    True
    """
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = []
    for token in template.split():
        if token.startswith("<"):
            slot, plural = token[1:].split(">")
            words.append(WORDS[slot][rng.integers(len(WORDS[slot]))] + plural)
        else:
            words.append(token)
    return " ".join(words)


def add_emotional_phrase(sentence, valence, rng):
    """Says a random phrase of ``valence`` before or after ``sentence``.

    Arguments
    ---------
    sentence : str
        A grammar sentence.
    valence : str
        "positive" or "negative" (a key of ``VALENCE_PHRASES``).
    rng : numpy.random.Generator
        Draws the phrase and its place.

    Returns
    -------
    str
        The sentence with the phrase.

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> add_emotional_phrase("the cat is old", "negative", rng)
    'i am so upset the cat is old'
    """
    phrases = VALENCE_PHRASES[valence]
    phrase = phrases[rng.integers(len(phrases))]
    if rng.random() < 0.5:
        return f"{phrase} {sentence}"
    return f"{sentence} {phrase}"


def check_emotional_wording(share):
    """Checks the ``emotional_wording`` share; returns it as a float.

    Arguments
    ---------
    share : float
        Share of the utterances with an emotional phrase, in [0, 1].

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If it is not a number in [0, 1].

    Example
    -------
    >>> check_emotional_wording(0.5)
    0.5
    """
    if (
        not isinstance(share, (int, float))
        or isinstance(share, bool)
        or not 0.0 <= share <= 1.0
    ):
        raise ValueError(
            f"emotional_wording={share!r}: give the share of the utterances "
            "that carry an emotional phrase, a number in [0, 1] (0: none)."
        )
    return float(share)
