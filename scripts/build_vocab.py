"""Build the shipped default vocabulary `zoo/resources/vocab.txt` (12,000 tokens).

Alphabet: every character of the embedded corpus (train and held-out), the 6,763 GB2312 hanzi,
printable ASCII and the full-width forms; the remaining budget goes to Latin/digit word pieces
learned from the corpus. Deterministic: rerunning gives the same file.

    python scripts/build_vocab.py [--out zoo/resources/vocab.txt] [--size 12000]
"""

import argparse
from pathlib import Path

from zoo.corpus import embedded_corpus
from zoo.tokenizer import DEFAULT_VOCAB, save_vocab, train_tokenizer


def gb2312_hanzi() -> list[str]:
    chars = []
    for high in range(0xB0, 0xF8):
        for low in range(0xA1, 0xFF):
            try:
                chars.append(bytes([high, low]).decode("gb2312"))
            except UnicodeDecodeError:
                pass
    return chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_VOCAB)
    parser.add_argument("--size", type=int, default=12000)
    args = parser.parse_args()
    alphabet = gb2312_hanzi()
    alphabet += [chr(c) for c in range(0x21, 0x7F)]
    alphabet += [chr(c) for c in range(0xFF01, 0xFF5F)]
    alphabet += list("，。、；：？！“”‘’（）《》〈〉【】『』「」…—～·")
    tokenizer = train_tokenizer(embedded_corpus("all"), vocab_size=args.size, initial_alphabet=alphabet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_vocab(tokenizer, args.out)
    print(f"wrote {len(tokenizer)} tokens to {args.out}")


if __name__ == "__main__":
    main()
