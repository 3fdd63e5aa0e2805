"""Text <-> token ids for a LanguageModel (mixed into it): BOS handling, right-padded batches, input checks."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InputError


class Tokens(NamedTuple):
    """A right-padded batch: ids LongTensor [b, pos], attention_mask LongTensor [b, pos] (1 = real token)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor


def positions(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Absolute positions [b, pos] counting real tokens only; -1 on padding."""
    if mask is None:
        return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    pos = mask.cumsum(-1) - 1
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1))


class TokensMixin:
    """Tokenization methods of LanguageModel; needs ``tokenizer``, ``info``, ``name``, ``device``, ``_pad_id``."""

    def _prepend(self, prepend_bos: bool | None) -> bool:
        if prepend_bos is None:
            return self.info.default_prepend_bos
        if prepend_bos and self.info.bos_token_id is None:
            raise InputError(f"prepend_bos=True but model {self.name} has no BOS token")
        return bool(prepend_bos)

    def _encode(self, texts: list[str], prepend_bos: bool | None, truncate: bool) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str):
                raise InputError(f"text must be a string, got {type(t).__name__}")
        bos = self._prepend(prepend_bos)
        # verbose=False: no "sequence longer than the maximum" warning; saescope checks and cuts contexts itself
        enc = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        out = []
        for ids in enc:
            ids = ([self.info.bos_token_id] if bos else []) + list(ids)
            if truncate:
                ids = ids[: self.info.n_ctx]
            out.append(ids)
        return out

    def tokenize(self, text: str | list[str], prepend_bos: bool | None = None, truncate: bool = False) -> Tokens:
        """Text -> Tokens(ids [b, pos], attention_mask [b, pos]), right-padded. ``truncate`` cuts at n_ctx."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("no text given: pass a string or a non-empty list of strings")
        seqs = self._encode(texts, prepend_bos, truncate)
        width = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return Tokens(ids.to(self.device), mask.to(self.device))

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None, truncate: bool = False) -> torch.Tensor:
        """Text -> LongTensor [b, pos] (right-padded with the pad/eos id; use ``tokenize`` for the mask)."""
        return self.tokenize(text, prepend_bos=prepend_bos, truncate=truncate).ids

    def to_str_tokens(self, text_or_ids, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """A string or ids [pos] / [1, pos] -> one string per token; a list of strings or ids [b, pos] -> a list per row."""
        if isinstance(text_or_ids, str):
            ids = self._encode([text_or_ids], prepend_bos, False)[0]
            return [self.tokenizer.decode([i]) for i in ids]
        if isinstance(text_or_ids, (list, tuple)) and text_or_ids and isinstance(text_or_ids[0], str):
            return [self.to_str_tokens(t, prepend_bos) for t in text_or_ids]
        ids = torch.as_tensor(text_or_ids)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() == 2:
            return [[self.tokenizer.decode([i]) for i in row.tolist()] for row in ids]
        return [self.tokenizer.decode([i]) for i in ids.tolist()]

    def to_string(self, ids) -> str | list[str]:
        """ids [pos] -> str; ids [b, pos] -> list[str]."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in ids]
        return self.tokenizer.decode(ids.tolist())

    def _ids_from_tensor(self, inputs: torch.Tensor, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        if inputs.dtype not in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
            raise InputError(f"token ids must be an integer tensor, got {inputs.dtype}")
        ids = inputs.long().to(self.device)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise InputError(f"token ids must have shape [batch, pos], got {list(inputs.shape)}")
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).long().to(self.device)
            if mask.dim() == 1:
                mask = mask[None]
            if mask.shape != ids.shape:
                raise InputError(f"attention_mask shape {list(mask.shape)} differs from ids shape {list(ids.shape)}")
        return ids, mask

    def _prepare(self, inputs, prepend_bos, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """inputs -> (ids [b, pos] on device, attention mask [b, pos] or None when there is no padding)."""
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            ids, mask = self.tokenize(inputs, prepend_bos=prepend_bos)
            if attention_mask is not None:
                raise InputError("attention_mask is only accepted with token ids, not with text")
        elif isinstance(inputs, torch.Tensor):
            ids, mask = self._ids_from_tensor(inputs, attention_mask)
        else:
            raise InputError(f"inputs must be a string, a list of strings or a LongTensor [batch, pos], "
                             f"got {type(inputs).__name__}")
        if ids.numel() == 0:
            raise InputError("empty input: no tokens to run")
        if ids.shape[1] > self.info.n_ctx:
            raise InputError(f"input has {ids.shape[1]} tokens but model {self.name} has a context of "
                             f"{self.info.n_ctx}; shorten it or tokenize with truncate=True")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.info.d_vocab:
            raise InputError(f"token id {hi if hi >= self.info.d_vocab else lo} out of range for vocabulary size "
                             f"{self.info.d_vocab}")
        if mask is not None and bool(mask.all()):
            mask = None
        return ids, mask

    @staticmethod
    def _positions(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return positions(ids, mask)


# ---------------------------------------------------------------------------------------------- display
CONTINUATION = "\u25cc"     # shown in a token's cell when all its bytes continue a character shown in an earlier cell
_BYTE_FALLBACK = {f"<0x{b:02X}>": b for b in range(256)}    # SentencePiece byte-fallback tokens


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in of every byte in byte-level BPE vocabularies (GPT-2's published mapping):
    printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 onwards, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(0x100 + extra)] = b
            extra += 1
    return out


_BYTE_LEVEL = _byte_level_alphabet()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes token ``token_id`` stands for. Tokens that decode to whole characters give their UTF-8; a token
    that holds only part of a character (its decode shows U+FFFD) gives its raw bytes, read from the byte-level
    BPE piece or the SentencePiece ``<0xNN>`` piece (when neither applies, the decode's own UTF-8)."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text.encode("utf-8")
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str):
        if piece in _BYTE_FALLBACK:
            return bytes([_BYTE_FALLBACK[piece]])
        if piece and all(c in _BYTE_LEVEL for c in piece):
            return bytes(_BYTE_LEVEL[c] for c in piece)
    return text.encode("utf-8")


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0


def display_tokens(tokenizer, ids) -> list[str]:
    """A row of token ids ``[pos]`` -> one display string per token, for tables and highlighted text.

    Characters split across tokens (byte-level BPE and byte-fallback vocabularies cut UTF-8 inside a character)
    are merged: the whole character shows in the cell of the token where it starts; a token made only of the
    rest of such a character shows ``CONTINUATION`` (◌). Bytes that form no character within the row (a window
    cut mid-character, invalid UTF-8) show as ``\\xNN``. Tokens that hold whole characters show ``decode([id])``.
    ``tokenizer``: a Hugging Face tokenizer, or any object with ``.tokenizer`` (a LanguageModel).
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    data, owner = bytearray(), []
    for j, i in enumerate(ids):
        b = token_bytes(tok, i)
        data += b
        owner += [j] * len(b)
    cells = [""] * len(ids)
    continued = [False] * len(ids)
    p = 0
    while p < len(data):
        n = _utf8_length(data[p])
        chunk = bytes(data[p:p + n]) if n else b""
        try:
            char = chunk.decode("utf-8") if len(chunk) == n and n else None
        except UnicodeDecodeError:
            char = None
        if char is None:                     # not a character: show the byte
            cells[owner[p]] += f"\\x{data[p]:02x}"
            p += 1
            continue
        cells[owner[p]] += char
        for q in range(p + 1, p + n):
            if owner[q] != owner[p]:
                continued[owner[q]] = True
        p += n
    return [c if c or not continued[j] else CONTINUATION for j, c in enumerate(cells)]
