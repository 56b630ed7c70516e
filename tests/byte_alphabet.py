"""GPT-2's byte-level alphabet, which the Llama-3 and Qwen3 tokenizers use:
each byte is written as one printable character in a token's piece. Shared
by the tests that map pieces back to raw bytes (imported by name: tests/ is
on the path through its conftest.py)."""


def byte_to_char():
    """byte -> the character that stands for it in a byte-level piece."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def char_to_byte():
    """The inverse: a piece's character -> the byte it stands for."""
    return {c: b for b, c in byte_to_char().items()}
