"""The transformer forward the pack runs instead of diffusers': same arithmetic, three changes.

1. Blocks can stream from host memory (:class:`BlockStreamer`).
2. Modulation comes from a precomputed table (:class:`ModulationTable`).
3. Several text samples (prompt and negative prompt) share one pass over the weights, in one of two
   ways (``cfg``):
   - ``batched`` (default): the image stream is batched and the two text streams packed into one
     sequence for the linear layers (attention per sample, no padding or mask). Larger matmuls are a
     little faster; cuBLAS may pick other kernels for them, so results may differ from two calls by
     bf16 rounding (measured: identical for Edit 1024, 3.4e-2 relative on Layered 640 after 6 steps);
   - ``interleaved``: each block, once on the GPU, computes the prompt's sample and then the negative
     prompt's with the shapes a single call uses: bit-identical to two calls, weights still cross
     PCIe once per step.

It serves the calls the Qwen pipelines make (one image sample, no guidance embedding, no
ControlNet); anything else is refused with a clear message rather than computed differently.
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn

from ..errors import QwenFitError
from ..planning.work_split import token_spans
from .attention_choice import Kernel, attention_kernel
from .block_streamer import BlockStreamer
from .cfg_pairing import CfgPairing, TextInput
from .devices import indexed
from .joint_attention import Projected, output_projections, rotated_qkv
from .modulation import ModulationTable, expand_for_batch, single_sample_temb
from .sequence_parallel import PeerCopies, heads_for_ranks, tokens_for_ranks
from .step_cache import StepCache


@dataclass
class _Sample:
    """The streams of one pass through the blocks and the tables they use, on one GPU."""

    device: torch.device
    image: torch.Tensor
    text: torch.Tensor
    lengths: list[int]
    img_freqs: torch.Tensor
    txt_freqs: torch.Tensor
    index: torch.Tensor | None

    def move_to(self, device: torch.device) -> None:
        """Hop to ``device`` (a block resident there): the streams and tables go along."""
        if device == self.device:
            return
        self.image, self.text = self.image.to(device), self.text.to(device)
        self.img_freqs, self.txt_freqs = self.img_freqs.to(device), self.txt_freqs.to(device)
        self.index = None if self.index is None else self.index.to(device)
        self.device = device


def _timestep_key(timestep: torch.Tensor, additional_t_cond: torch.Tensor | None) -> Hashable:
    # One read from the GPU per transformer call (once per step with batched CFG), never per block.
    cond = None if additional_t_cond is None else tuple(additional_t_cond.flatten().tolist())
    return (float(timestep.flatten()[0]), cond)


class TransformerEngine:
    """Installs itself as ``transformer.forward``; :meth:`uninstall` restores diffusers' forward."""

    def __init__(
        self,
        transformer: nn.Module,
        device: torch.device,
        streamer: BlockStreamer | None = None,
        modulation: ModulationTable | None = None,
        scheduler: Any = None,
        attention_backend: str | None = None,
        cfg: str = "batched",
    ) -> None:
        self.transformer = transformer
        self.cfg = cfg
        self.device = indexed(device)
        self.streamer = streamer
        self.modulation = modulation
        self.scheduler = scheduler
        # Looked up once here: the forward calls them 60 times per pass.
        from diffusers.models.modeling_outputs import Transformer2DModelOutput
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        self._rotary = apply_rotary_emb_qwen
        self._output_class = Transformer2DModelOutput
        self.attention_backend = attention_backend
        self.pairing = CfgPairing()
        self._schedule_keys: set[Hashable] = set()
        # Several GPUs: resident blocks on another GPU than ``device`` (block split); CFG-parallel's second
        # GPU (its streamer computes the negative prompt); sequence parallelism's other GPUs and the heads each
        # GPU attends with (the first GPU's share first).
        self.placement: dict[int, torch.device] = {}
        self.replica: BlockStreamer | None = None
        self.ranks: tuple[BlockStreamer, ...] = ()
        self.head_shares: tuple[int, ...] = ()
        self._mirrors: dict[tuple[Hashable, torch.device], list] = {}  # modulation rows on other GPUs
        self._copies: PeerCopies | None = None  # sequence parallelism's side streams
        self.step_cache: StepCache | None = None  # the fastest rung's (optim/execution/step_cache.py)

    @property
    def attention_backend(self) -> str | None:
        """The attention kernel's name (optim/execution/attention_choice.py); None: diffusers' default."""
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, name: str | None) -> None:
        # Looked up once here: the forward calls it 60 times per pass.
        self._attend: Kernel = attention_kernel(name, self.device)
        self._attention_backend = name

    def compile_blocks(self, on: bool = True) -> None:
        """Compile the per-block computation once; every block reuses it (same shapes, weights as inputs).
        ``on=False`` goes back to the eager method."""
        # Sequence parallelism runs a block in two halves around its exchanges: each half compiles alone.
        for name in ("_block", "_block_begin", "_block_end"):
            if not on:
                self.__dict__.pop(name, None)
            elif name not in self.__dict__:
                setattr(self, name, torch.compile(getattr(self, name), dynamic=False))

    def install(self) -> None:
        # An instance attribute wins over the class method, so nn.Module.__call__ runs ours.
        self.transformer.forward = self.forward

    def uninstall(self) -> None:
        self.transformer.__dict__.pop("forward", None)

    def place(
        self,
        placement: dict[int, torch.device],
        replica: BlockStreamer | None = None,
        ranks: tuple[BlockStreamer, ...] = (),
        head_shares: tuple[int, ...] = (),
    ) -> None:
        """Where blocks resident on other GPUs compute (block split); the streamer of the GPU computing the
        negative prompt (CFG-parallel); or the streamers of the other GPUs of a sequence-parallel forward
        with every GPU's heads (``head_shares``, this engine's GPU first). Nothing of the others: one GPU."""
        if ranks and len(head_shares) != len(ranks) + 1:
            raise ValueError(f"{len(ranks) + 1} GPUs need {len(ranks) + 1} head shares, got {head_shares}")
        self.placement = {block: device for block, device in placement.items() if device != self.device}
        self.replica, self.ranks, self.head_shares = replica, tuple(ranks), tuple(head_shares)
        self._mirrors = {}
        self._copies = None

    def _peer_copies(self, devices: list[torch.device]) -> PeerCopies:
        # Made once per placement: its side streams live as long as the engine uses these GPUs.
        if self._copies is None or self._copies.devices != devices:
            self._copies = PeerCopies(devices)
        return self._copies

    def _streamers(self) -> list[BlockStreamer]:
        """Every streamer a run uses: this GPU's, then the other GPUs'."""
        others = [self.replica] if self.replica is not None else list(self.ranks)
        return ([self.streamer] if self.streamer is not None else []) + others

    def begin_run(self) -> None:
        self.pairing.clear()
        if self.step_cache is not None:
            self.step_cache.clear()
        self._schedule_keys = set()
        self._mirrors = {}
        for streamer in self._streamers():
            streamer.start()

    def end_run(self) -> None:
        self.pairing.clear()
        for streamer in self._streamers():
            streamer.stop()

    # -- the forward diffusers' pipelines call ------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_shapes: list | None = None,
        guidance: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples: Any = None,
        additional_t_cond: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        if guidance is not None or controlnet_block_samples is not None or attention_kwargs:
            raise QwenFitError("the QwenFit engine does not run guidance-distilled or ControlNet Qwen models")
        if hidden_states.shape[0] != 1:
            raise QwenFitError("the QwenFit engine runs one image per call (batch 1)")
        output = self.pairing.take(hidden_states, encoder_hidden_states)
        if output is None:
            texts = [TextInput(encoder_hidden_states, encoder_hidden_states_mask)]
            partner = self.pairing.partner(encoder_hidden_states)
            if partner is not None:
                texts.append(partner)
            outputs = self.run(hidden_states, texts, timestep, img_shapes, additional_t_cond)
            if partner is not None:
                self.pairing.keep(hidden_states, partner.embeds, outputs[1])
            output = outputs[0]
        return self._output_class(sample=output) if return_dict else (output,)

    # -- the computation ----------------------------------------------------------------------

    def _modulation_rows(
        self, timestep: torch.Tensor, dtype: torch.dtype, additional_t_cond: torch.Tensor | None
    ) -> tuple[Hashable, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """(timestep key, per block (img, txt) rows), or rows None without a modulation table."""
        key = _timestep_key(timestep, additional_t_cond)
        if self.modulation is None:
            return key, None
        rows = self.modulation.rows_for(key)
        if rows is not None:
            return key, rows
        # First call of a schedule: compute rows for every timestep the scheduler will visit, the way
        # the pipeline derives them (t in the latents' dtype, divided by 1000 in that dtype).
        wanted = {key: timestep}
        if self.scheduler is not None and getattr(self.scheduler, "timesteps", None) is not None:
            for t in self.scheduler.timesteps:
                t_in = t.expand(1).to(timestep.dtype) / 1000
                wanted.setdefault(_timestep_key(t_in, additional_t_cond), t_in.to(self.device))
        self._schedule_keys |= set(wanted)
        self.modulation.keep_only(self._schedule_keys)
        self._mirrors = {k: v for k, v in self._mirrors.items() if k[0] in self._schedule_keys}
        tembs = {
            k: single_sample_temb(self.transformer, t.reshape(1), dtype, additional_t_cond) for k, t in wanted.items()
        }
        self.modulation.compute(tembs)
        return key, self.modulation.rows_for(key)

    def _rows_on(self, key: Hashable, rows: list, device: torch.device) -> list:
        """The step's modulation rows on ``device`` (copied there once per timestep)."""
        if device == self.device:
            return rows
        mirror = self._mirrors.get((key, device))
        if mirror is None:
            mirror = [(img.to(device), txt.to(device)) for img, txt in rows]
            self._mirrors[(key, device)] = mirror
        return mirror

    def _devices_used(self) -> list[torch.device]:
        devices = {*self.placement.values(), *(s.device for s in self._streamers())}
        return [d for d in devices if d != self.device]

    def _text_streams(self, texts: list[TextInput]) -> tuple[torch.Tensor, list[int]]:
        tr = self.transformer
        streams, lengths = [], []
        for text in texts:
            embeds = text.embeds.to(self.device)
            if text.mask is not None and not bool(text.mask.all()):
                keep = text.mask[0].bool()
                if not bool(keep[: int(keep.sum())].all()):
                    raise QwenFitError("the QwenFit engine needs prompt masks that only pad at the end")
                embeds = embeds[:, : int(keep.sum())]
            streams.append(tr.txt_in(tr.txt_norm(embeds)))
            lengths.append(streams[-1].shape[1])
        return (streams[0] if len(streams) == 1 else torch.cat(streams, dim=1)), lengths

    def run(
        self,
        hidden_states: torch.Tensor,
        texts: list[TextInput],
        timestep: torch.Tensor,
        img_shapes: list,
        additional_t_cond: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The transformer's output for one latent input under each text input ([1, N, C] each)."""
        home = hidden_states.device
        cache_keys, step, steps, t = self._cache_position(texts, timestep)
        if cache_keys and self.step_cache.skips(step, steps, cache_keys):
            return [self.step_cache.predict(key, t).to(home) for key in cache_keys]
        hidden_states, timestep = hidden_states.to(self.device), timestep.to(self.device)
        parallel = self.replica is not None and len(texts) == 2
        if self.ranks and len(texts) == 1:
            outputs = [self._run_sequence_parallel(hidden_states, texts[0], timestep, img_shapes, additional_t_cond)]
        elif len(texts) == 1 or self.cfg == "interleaved" or parallel:  # also the single-text path
            outputs = self._run_per_sample(hidden_states, texts, timestep, img_shapes, additional_t_cond, parallel)
        else:
            outputs = self._run_batched(hidden_states, texts, timestep, img_shapes, additional_t_cond)
        for key, output in zip(cache_keys, outputs, strict=False):
            self.step_cache.keep(key, t, output)
        return [output.to(home) for output in outputs]

    def _cache_position(self, texts: list[TextInput], timestep: torch.Tensor) -> tuple[list[Hashable], int, int, float]:
        """(one step-cache key per text input, this step, the steps, the timestep); no keys without a cache.
        A text input is known by its tensor: the prompt cache hands the same one to every step."""
        if self.step_cache is None or getattr(self.scheduler, "timesteps", None) is None:
            return [], 0, 0, 0.0
        keys: list[Hashable] = [
            (len(texts), i, text.embeds.data_ptr(), tuple(text.embeds.shape)) for i, text in enumerate(texts)
        ]
        step = self.scheduler.step_index or 0
        return keys, step, len(self.scheduler.timesteps), float(timestep.flatten()[0])

    def _run_batched(
        self,
        hidden_states: torch.Tensor,
        texts: list[TextInput],
        timestep: torch.Tensor,
        img_shapes: list,
        additional_t_cond: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """Every sample in one pass: the image streams batched, the text streams packed."""
        tr = self.transformer
        batch = len(texts)
        image, temb, index = self._image_stream(hidden_states, timestep, img_shapes, additional_t_cond, batch)
        dtype = image.dtype
        text, lengths = self._text_streams(texts)
        img_freqs, txt_freqs = tr.pos_embed(img_shapes, max_txt_seq_len=max(lengths), device=image.device)
        txt_freqs = torch.cat([txt_freqs[:n] for n in lengths]) if batch > 1 else txt_freqs[: lengths[0]]
        if batch > 1:
            image = image.repeat(batch, 1, 1)
        key, rows = self._modulation_rows(timestep, dtype, additional_t_cond)
        state = _Sample(self.device, image, text, lengths, img_freqs, txt_freqs, index)
        mirrors = {d: self._rows_on(key, rows, d) for d in self._devices_used()} if rows is not None else {}
        for i, block in enumerate(tr.transformer_blocks):
            if self.streamer is not None:
                self.streamer.enter(i)
            state.move_to(self.placement.get(i, self.device))
            if rows is not None:
                img_mod, txt_mod = self.modulation.expand(mirrors.get(state.device, rows)[i], batch)
            else:
                img_mod, txt_mod = self._live_modulation(block, temb, batch)
            state.image, state.text = self._block(
                block, state.image, state.text, lengths, img_mod, txt_mod, state.img_freqs, state.txt_freqs, state.index
            )
            if self.streamer is not None:
                self.streamer.leave(i)
        output = self._project_out(state.image.to(self.device), temb)
        return [output[b : b + 1] for b in range(batch)]

    def _run_per_sample(
        self,
        hidden_states: torch.Tensor,
        texts: list[TextInput],
        timestep: torch.Tensor,
        img_shapes: list,
        additional_t_cond: torch.Tensor | None,
        parallel: bool = False,
    ) -> list[torch.Tensor]:
        """Every sample computed as a single call computes it, block by block in lockstep, so each
        block's weights are fetched once for all samples. ``parallel``: the second sample computes on
        the replica GPU with the replica's weights; kernels queue on both GPUs without a host wait,
        so the two samples run at the same time and join when the outputs are gathered."""
        tr = self.transformer
        image, temb, index = self._image_stream(hidden_states, timestep, img_shapes, additional_t_cond, 1)
        dtype = image.dtype
        key, rows = self._modulation_rows(timestep, dtype, additional_t_cond)
        states = []
        for text_input in texts:
            text, lengths = self._text_streams([text_input])
            img_freqs, txt_freqs = tr.pos_embed(img_shapes, max_txt_seq_len=lengths[0], device=image.device)
            states.append(_Sample(self.device, image, text, lengths, img_freqs, txt_freqs[: lengths[0]], index))
        # Every copy to another GPU is queued before the first block: a copy between GPUs waits for
        # the work queued on both, so one inside the loop would serialise them.
        mirrors = {d: self._rows_on(key, rows, d) for d in self._devices_used()} if rows is not None else {}
        replica = self.replica if parallel else None
        if replica is not None:
            states[1].move_to(replica.device)
        for i, block in enumerate(tr.transformer_blocks):
            if self.streamer is not None:
                self.streamer.enter(i)
            if replica is not None:
                replica.enter(i)
            for s, state in enumerate(states):
                on_replica = replica is not None and s == 1
                if not on_replica:
                    state.move_to(self.placement.get(i, self.device))
                if rows is not None:
                    img_mod, txt_mod = self.modulation.expand(mirrors.get(state.device, rows)[i], 1)
                else:
                    img_mod, txt_mod = self._live_modulation(block, temb.to(state.device), 1)
                with replica.bound(i) if on_replica else nullcontext():
                    state.image, state.text = self._block(
                        block, state.image, state.text, state.lengths, img_mod, txt_mod,
                        state.img_freqs, state.txt_freqs, state.index,
                    )  # fmt: skip
            if replica is not None:
                replica.leave(i)
            if self.streamer is not None:
                self.streamer.leave(i)
        return [self._project_out(state.image.to(self.device), temb) for state in states]

    def _run_sequence_parallel(
        self,
        hidden_states: torch.Tensor,
        text_input: TextInput,
        timestep: torch.Tensor,
        img_shapes: list,
        additional_t_cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """One sample with its image tokens cut over this GPU and ``ranks``' GPUs in proportion to their heads
        (optim/execution/sequence_parallel.py): every GPU runs every block on its tokens (this GPU also on the
        whole text), with its own copy of the weights; attention exchanges heads for tokens and back. Kernels queue
        on every GPU without a host wait; the copies between GPUs order the streams."""
        tr = self.transformer
        streamers = [self.streamer, *self.ranks]
        devices = [streamer.device for streamer in streamers]
        image, temb, index = self._image_stream(hidden_states, timestep, img_shapes, additional_t_cond, 1)
        text, lengths = self._text_streams([text_input])
        img_freqs, txt_freqs = tr.pos_embed(img_shapes, max_txt_seq_len=lengths[0], device=image.device)
        txt_freqs = txt_freqs[: lengths[0]]
        key, rows = self._modulation_rows(timestep, image.dtype, additional_t_cond)
        mirrors = {d: self._rows_on(key, rows, d) for d in devices} if rows is not None else {}
        spans = token_spans(image.shape[1], self.head_shares)
        copies = self._peer_copies(devices)
        # The text stream on the first GPU only; the others run their blocks on an empty text.
        states = [
            _Sample(
                device,
                image[:, a:b].to(device),
                (text if r == 0 else text[:, :0]).to(device),
                lengths,
                img_freqs[a:b].to(device),
                (txt_freqs if r == 0 else txt_freqs[:0]).to(device),
                None if index is None else index[:, a:b].to(device),
            )  # fmt: skip
            for r, (device, (a, b)) in enumerate(zip(devices, spans, strict=True))
        ]
        for i, block in enumerate(tr.transformer_blocks):
            # Both halves in GPU order. One thread queues every GPU's kernels, and measured on two H200s this
            # order is the faster one: ending in reverse order (binding each GPU's weights once per block)
            # took 0.369 s/step instead of 0.232 (session 11's exchange).
            begun = []
            for streamer, state in zip(streamers, states, strict=True):
                streamer.enter(i)
                if rows is not None:
                    img_mod, txt_mod = self.modulation.expand(mirrors[state.device][i], 1)
                else:
                    img_mod, txt_mod = self._live_modulation(block, temb.to(state.device), 1)
                with streamer.bound(i):
                    qkv, kept = self._block_begin(
                        block, state.image, state.text, img_mod, txt_mod, state.img_freqs, state.txt_freqs,
                        state.index,
                    )  # fmt: skip
                # Only the first GPU's text goes on (the others' is empty).
                begun.append((torch.stack(qkv[:3]), torch.stack(qkv[3:]) if not begun else None, kept))
            joints = heads_for_ranks([b[0] for b in begun], begun[0][1], self.head_shares, copies)
            attended = [self._attend(j[0], j[1], j[2]).to(j.dtype) for j in joints]
            back = tokens_for_ranks(attended, lengths[0], spans, copies)
            for streamer, state, (_, _, kept), (txt_joint, img_joint) in zip(
                streamers, states, begun, back, strict=True
            ):
                with streamer.bound(i):
                    state.image, state.text = self._block_end(
                        block, state.image, state.text, img_joint.flatten(-2), txt_joint.flatten(-2), kept, state.index
                    )
                streamer.leave(i)
        image = torch.cat([state.image.to(self.device) for state in states], dim=1)
        return self._project_out(image, temb)

    def _image_stream(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        img_shapes: list,
        additional_t_cond: torch.Tensor | None,
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The embedded image stream, the single-sample timestep embedding and, for 2511, the index
        saying which image tokens take the t rows (the output) and which the 0 rows (the references)."""
        tr = self.transformer
        image = tr.img_in(hidden_states)
        temb = single_sample_temb(tr, timestep, image.dtype, additional_t_cond)
        index = None
        if tr.config.zero_cond_t:
            sample = img_shapes[0]
            ids = [0] * prod(sample[0]) + [1] * sum(prod(s) for s in sample[1:])
            index = torch.tensor([ids], device=image.device, dtype=torch.int).expand(batch, -1)
        return image, temb, index

    def _project_out(self, image: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        tr = self.transformer
        final_temb = temb.chunk(2, dim=0)[0] if tr.config.zero_cond_t else temb
        return tr.proj_out(tr.norm_out(image, final_temb))

    def _live_modulation(self, block: nn.Module, temb: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        zero_cond_t = bool(self.transformer.config.zero_cond_t)
        img = block.img_mod(temb)
        txt = block.txt_mod(temb.chunk(2, dim=0)[0] if zero_cond_t else temb)
        return expand_for_batch(img, txt, batch, zero_cond_t)

    def _block(self, block, image, text, lengths, img_mod, txt_mod, img_freqs, txt_freqs, index):
        # The class's halves, not the instance's compiled ones: this whole function compiles as one graph.
        cls = TransformerEngine
        qkv, kept = cls._block_begin(self, block, image, text, img_mod, txt_mod, img_freqs, txt_freqs, index)
        img_joint, txt_joint = self._joint_attention(qkv, lengths)
        return cls._block_end(self, block, image, text, img_joint, txt_joint, kept, index)

    def _block_begin(self, block, image, text, img_mod, txt_mod, img_freqs, txt_freqs, index):
        """A block up to attention: (the rotated Q/K/V, what the rest of the block needs)."""
        img_mod1, img_mod2 = img_mod.chunk(2, dim=-1)
        txt_mod1, txt_mod2 = txt_mod.chunk(2, dim=-1)
        img_in, img_gate1 = block._modulate(block.img_norm1(image), img_mod1, index)
        # An empty text (sequence parallelism's other GPUs) queues nothing: the host is their limit.
        txt_in, txt_gate1 = block._modulate(block.txt_norm1(text), txt_mod1) if text.shape[1] else (text, None)
        qkv = rotated_qkv(block.attn, img_in, txt_in, img_freqs, txt_freqs, self._rotary)
        return qkv, (img_gate1, txt_gate1, img_mod2, txt_mod2)

    def _block_end(self, block, image, text, img_joint, txt_joint, kept, index):
        """A block from the attended tokens (heads flattened) on: output projections, gates and MLPs."""
        img_gate1, txt_gate1, img_mod2, txt_mod2 = kept
        img_attn, txt_attn = output_projections(block.attn, img_joint, txt_joint)
        text_given = bool(text.shape[1])  # an empty text (sequence parallelism's other GPUs) queues nothing
        image = image + img_gate1 * img_attn
        if text_given:
            text = text + txt_gate1 * txt_attn
        img_in2, img_gate2 = block._modulate(block.img_norm2(image), img_mod2, index)
        image = image + img_gate2 * block.img_mlp(img_in2)
        if text_given:
            txt_in2, txt_gate2 = block._modulate(block.txt_norm2(text), txt_mod2)
            text = text + txt_gate2 * block.txt_mlp(txt_in2)
        if image.dtype == torch.float16:  # as diffusers does: fp16 overflows in this model
            image, text = image.clip(-65504, 65504), text.clip(-65504, 65504)
        return image, text

    def _joint_attention(self, qkv: Projected, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's text (packed, ``lengths``) and image tokens attended together; heads flattened."""
        iq, ik, iv, tq, tk, tv = qkv
        img_out, txt_out, start = [], [], 0
        for b, n in enumerate(lengths):
            span = slice(start, start + n)
            q = torch.cat([tq[:, span], iq[b : b + 1]], dim=1)
            k = torch.cat([tk[:, span], ik[b : b + 1]], dim=1)
            v = torch.cat([tv[:, span], iv[b : b + 1]], dim=1)
            joint = self._attend(q, k, v)
            joint = joint.flatten(2, 3).to(q.dtype)
            txt_out.append(joint[:, :n])
            img_out.append(joint[:, n:])
            start += n
        img_joint = img_out[0] if len(img_out) == 1 else torch.cat(img_out)
        txt_joint = txt_out[0] if len(txt_out) == 1 else torch.cat(txt_out, dim=1)
        return img_joint, txt_joint
