"""`Embedder`: texts -> embeddings through an artifact's encoder, pooling and head graphs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from .errors import ArtifactError, UnknownHeadError
from .manifest import MANIFEST_NAME, Manifest, sha256_of
from .prepared import PreparedTexts
from .providers import ProviderSpec, choose_providers, create_session, cuda_device_id, session_options
from .tokenization import TextTokenizer
from .vectors import unit_rows

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
# Rows per head run in `apply_head`: bounds its intermediate arrays whatever the number of texts.
_HEAD_ROWS = 1024


class _Graph:
    """One InferenceSession, checked to take exactly `inputs`, run for one output.

    The output is `output` when the graph has it, else its only output (ONNX names are
    single-assignment, so a head cannot output under its input's name).
    """

    def __init__(self, session: ort.InferenceSession, path: Path, inputs: Sequence[str], output: str) -> None:
        declared = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if output not in outputs and len(outputs) == 1:
            output = next(iter(outputs))
        if set(declared) != set(inputs) or output not in outputs:
            raise ArtifactError(
                f"{path}: graph has inputs {sorted(declared)} and outputs {sorted(outputs)}; "
                f"expected inputs {sorted(inputs)} and output {output!r}."
            )
        self.session = session
        self.output = output
        self.output_shape = outputs[output].shape
        # A float16 artifact may declare float16 inputs; `__call__` casts rather than fail.
        self.dtypes = {name: _NUMPY_TYPES.get(i.type, np.int64) for name, i in declared.items()}

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.asarray(value, dtype=self.dtypes[name]) for name, value in feed.items()}
        return self.session.run([self.output], feed)[0]

    def run_bound(self, feed: dict[str, np.ndarray | ort.OrtValue], device: str, device_id: int) -> ort.OrtValue:
        """Run with I/O binding: arrays are copied in, OrtValues (already on `device`) are used in
        place, and the output stays on `device` for the next graph."""
        binding = self.session.io_binding()
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self.dtypes[name]))
        binding.bind_output(self.output, device, device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]


class Embedder:
    """Embed texts with an exported artifact folder, using only onnxruntime, tokenizers and numpy.

    Args:
        path: the artifact folder (holding `manifest.json`).
        device: 'cpu', 'cuda' or 'cuda:<index>'; ignored when `providers` is given.
        providers: an explicit onnxruntime providers list. The session must run on the first one,
            unless the list includes 'CPUExecutionProvider' (then a fallback is accepted).
        threads: onnxruntime intra-op threads for the encoder (None: onnxruntime's default, one per
            physical core). The small pooling and head graphs always run on the calling thread.
        io_binding: keep token embeddings on the device between the encoder, pooling and head
            graphs (None: on for CUDA, off for the CPU, where it gains nothing).

    Every file's sha256 is checked and every graph is loaded up front. `encode` is safe to call
    from several threads at once.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        providers: Sequence[ProviderSpec] | None = None,
        threads: int | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self._path = Path(path)
        self._manifest = manifest = Manifest.load(self._path)
        manifest.verify_files(self._path)  # the manifest's own fields were checked as it was read
        # The manifest lists every file's sha256, so its own digest names the whole artifact.
        self._artifact_id = sha256_of(self._path / MANIFEST_NAME)

        self._tokenizer = TextTokenizer.from_file(self._path / manifest.tokenizer.file, manifest.tokenizer)
        choice = choose_providers(device, providers)
        # The pooling and head graphs are a mean and one small matmul: they run on the calling
        # thread. Thread pools of their own would spin-wait beside the encoder's and, on a 2-core
        # CPU, cost 40% of int8 throughput (bench/results/levers.md).
        small = session_options(1)

        def load(rel: str, inputs: Sequence[str], output: str, options: ort.SessionOptions = small) -> _Graph:
            file = self._path / rel
            return _Graph(create_session(file, choice, options), file, inputs, output)

        self._encoder_inputs = list(manifest.encoder.input_names)
        self._encoder = load(manifest.encoder.file, self._encoder_inputs, "token_embeddings", session_options(threads))
        self._pooling = load(manifest.pooling.file, ["token_embeddings", "attention_mask"], "sentence_embedding")
        self._heads = {
            name: load(entry.file, ["sentence_embedding"], "embedding") for name, entry in manifest.heads.items()
        }
        gpu = cuda_device_id(self._encoder.session)
        use_binding = gpu is not None if io_binding is None else io_binding
        self._binding = (("cuda", gpu) if gpu is not None else ("cpu", 0)) if use_binding else None
        for name, graph in self._heads.items():
            size = graph.output_shape[-1] if graph.output_shape else None
            if isinstance(size, int) and size != manifest.heads[name].dimension:
                raise ArtifactError(
                    f"{self._path / manifest.heads[name].file}: head {name!r} outputs {size} dimensions "
                    f"but the manifest says {manifest.heads[name].dimension}."
                )

    # -- description ---------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The artifact folder."""
        return self._path

    @property
    def artifact_id(self) -> str:
        """The sha256 of the artifact's manifest, which lists every file's sha256: cache keys use it."""
        return self._artifact_id

    @property
    def manifest(self) -> Manifest:
        """The artifact's parsed manifest."""
        return self._manifest

    @property
    def heads(self) -> list[str]:
        """Names of the output heads (routes), in manifest order."""
        return list(self._manifest.heads)

    @property
    def default_head(self) -> str:
        """The head `encode` uses when none is named."""
        return self._manifest.default_head

    def dimension(self, head: str | None = None) -> int:
        """Embedding size of `head` (default: the default head)."""
        return self._manifest.heads[self._resolve_head(head)].dimension

    def _resolve_head(self, head: str | None) -> str:
        name = self.default_head if head is None else head
        if name not in self._manifest.heads:
            raise UnknownHeadError.naming(name, self.heads)
        return name

    @property
    def pooled_dimension(self) -> int:
        """Width of the pooled vectors that `encode_pooled` returns and `apply_head` takes."""
        return self._manifest.pooling.dimension

    # -- tokens --------------------------------------------------------------------------
    def prepare(self, texts: Sequence[str], prompt_name: str | None = None,
                prompt: str | None = None) -> PreparedTexts:
        """Tokenize `texts` once, exactly as `encode` runs them (prompt prepended, cut, truncated,
        special tokens included). `pool` embeds the result; `token_counts` and `tokenize` read it.
        Raises `TextTooLongError` (with the text's index) for a text that can neither be cut nor
        tokenized whole within the limit."""
        texts = _check_texts(texts)
        prompt = self._resolve_prompt(prompt_name, prompt)
        return self._tokenizer.prepare_tokens(texts, prompt, self._prompt_skip(prompt))

    def token_counts(self, texts: Sequence[str], prompt_name: str | None = None,
                     prompt: str | None = None) -> np.ndarray:
        """Tokens per text as `encode` runs it (prompt included, after truncation, special tokens
        included); int64 [len(texts)]."""
        return self._tokenizer.token_counts(_check_texts(texts), self._resolve_prompt(prompt_name, prompt))

    def tokenize(self, texts: Sequence[str], prompt_name: str | None = None,
                 prompt: str | None = None) -> list[list[int]]:
        """Token ids per text as `encode` runs them (prompt included, truncated, special tokens
        included, unpadded)."""
        return self._tokenizer.tokenize(_check_texts(texts), self._resolve_prompt(prompt_name, prompt))

    def _resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        """The prompt text to prepend, as sentence-transformers resolves it ("" for none): `prompt`
        itself, else the prompt called `prompt_name`, else the model's default prompt."""
        prompts = self._manifest.prompts
        if prompt is not None:
            if prompt_name is not None:
                raise ValueError(f"pass prompt_name or prompt, not both (got {prompt_name!r} and {prompt!r}).")
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, not {type(prompt).__name__}.")
            return prompt
        if prompt_name is None:
            default = self._manifest.default_prompt_name
            return prompts.get(default, "") if default is not None else ""
        if prompt_name not in prompts:
            known = ", ".join(repr(name) for name in prompts) if prompts else "none"
            raise ValueError(f"prompt {prompt_name!r} does not exist; this model's prompts: {known}.")
        return prompts[prompt_name]

    def _prompt_skip(self, prompt: str) -> int:
        """How many leading tokens pooling leaves out: the prompt's, when the model excludes them."""
        if not prompt or self._manifest.pooling.include_prompt:
            return 0
        if "weightedmean" in self._manifest.pooling.modes:
            # sentence-transformers weights positions from the unmasked start; the pooling graph
            # derives them from the one mask it gets, so the prompt would shift every weight.
            raise ValueError(
                f"{self._path}: weightedmean pooling that excludes the prompt (include_prompt: false) cannot "
                "be computed with this artifact's pooling graph; encode without a prompt."
            )
        return self._tokenizer.prompt_length(prompt)

    # -- encoding ------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        head: str | None = None,
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> np.ndarray:
        """Embed `texts` with `head` (default: the default head); returns float32 [len(texts), dim].

        Texts are run longest first (by token count) and returned in input order. The default
        batch of 32 is the CPU's best throughput in `bench/results/speed.md`; use 1 for latency.
        `normalize=True` scales each row to unit L2 norm. `prompt_name` picks one of the model's
        prompts (default: its default prompt, if any) and `prompt` gives the text itself; the
        prompt is prepended to each stripped text, as sentence-transformers does.

        The same as `apply_head(encode_pooled(texts, batch_size, ...), head, normalize)`.
        """
        texts = _check_texts(texts)
        name = self._resolve_head(head)
        pooled = self.encode_pooled(texts, batch_size, prompt_name, prompt, show_progress)
        return self.apply_head(pooled, name, normalize)

    def encode_pooled(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """The encoder and pooling only: float32 [len(texts), pooled_dimension], in input order.

        Runs batches exactly as `encode` does; `apply_head` then gives any head's embeddings, so
        texts bound for several heads run the encoder once.
        """
        _check_batch_size(batch_size)
        return self.pool(self.prepare(texts, prompt_name, prompt), batch_size, show_progress)

    def pool(self, prepared: PreparedTexts, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """The encoder and pooling on texts from `prepare`: float32 [len(prepared), pooled_dimension],
        in their order. Texts run in batches sorted by token count, which carry less padding than
        sentence-transformers' sort by characters; a stable sort keeps equal-length texts in input
        order."""
        _check_batch_size(batch_size)
        out = np.zeros((len(prepared), self.pooled_dimension), dtype=np.float32)
        order = np.argsort(-prepared.counts, kind="stable")
        with tqdm(total=len(prepared), desc="Encoding", unit="text", disable=not show_progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._pool(prepared.select(rows).padded(self._manifest.tokenizer.pad_token_id))
                bar.update(len(rows))
        return out

    def apply_head(self, pooled: np.ndarray, head: str | None = None, normalize: bool = False) -> np.ndarray:
        """Run `head` (default: the default head) on pooled vectors [n, pooled_dimension] from
        `encode_pooled`; returns float32 [n, dim]. `normalize=True` scales each row to unit L2 norm."""
        name = self._resolve_head(head)
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != self.pooled_dimension:
            raise ValueError(
                f"pooled vectors must have shape (n, {self.pooled_dimension}), got {pooled.shape}; "
                "pass what encode_pooled returns."
            )
        graph = self._heads[name]
        out = np.zeros((len(pooled), self._manifest.heads[name].dimension), dtype=np.float32)
        for start in range(0, len(pooled), _HEAD_ROWS):
            feed = {"sentence_embedding": pooled[start : start + _HEAD_ROWS]}
            if self._binding is None:
                out[start : start + _HEAD_ROWS] = graph(feed)
            else:
                out[start : start + _HEAD_ROWS] = graph.run_bound(feed, *self._binding).numpy()
        return unit_rows(out) if normalize else out

    def _pool(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        """Encoder -> pooling for one padded batch (`PreparedTexts.padded`). The encoder sees every
        token; pooling uses `pooling_mask`, which leaves out prompt tokens when the model says so."""
        encoder_feed = {n: tokens[n] for n in self._encoder_inputs}
        pooling_mask = tokens["pooling_mask"]
        if self._binding is None:
            token_embeddings = self._encoder(encoder_feed)
            return self._pooling({"token_embeddings": token_embeddings, "attention_mask": pooling_mask})
        device, device_id = self._binding
        # On CUDA the token embeddings stay on the GPU between the two graphs.
        token_embeddings = self._encoder.run_bound(encoder_feed, device, device_id)
        pooled = self._pooling.run_bound(
            {"token_embeddings": token_embeddings, "attention_mask": pooling_mask}, device, device_id)
        return pooled.numpy()


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1.")


def _check_texts(texts: Sequence[str] | Iterable[str]) -> list[str]:
    """A list of the texts, or a TypeError naming what is wrong and where."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be a list of strings, not a single {type(texts).__name__}; wrap it: encode([text])."
        )
    if texts is None:
        raise TypeError("texts is None; pass a list of strings.")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a list of strings, not {type(texts).__name__}.") from None
    for index, item in enumerate(items):
        if not isinstance(item, str):
            what = "None" if item is None else f"of type {type(item).__name__}"
            raise TypeError(f"texts[{index}] is {what}; every text must be a str.")
    return items


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix [len(a), len(b)] of two 2-D arrays; rows that are all zero give 0."""
    dtype = np.result_type(np.asarray(a).dtype, np.asarray(b).dtype, np.float32)
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"similarity needs two 2-D arrays with the same width, got shapes {a.shape} and {b.shape}.")
    return unit_rows(a) @ unit_rows(b).T
