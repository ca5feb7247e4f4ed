"""Encrypt or decrypt standard input to standard output with age, as a process of its own.

pyrage holds the GIL while it encrypts, so inside the backup's process it
stalls the threads that read, hash and compress. A process of its own runs
beside them. Secret keys never appear on the command line: the recipients
given there are public, and the identities come through the file descriptor
named in the arguments.

Usage: python -m llmcloud.backup.agestream encrypt RECIPIENT...
       python -m llmcloud.backup.agestream decrypt IDENTITIES_FD

Exit status 0 on success, KEY_ERROR when no identity matches or the header
is damaged, STREAM_ERROR when the data after the header is damaged or cut
short; the reason goes to standard error.
"""

from __future__ import annotations

import sys

import pyrage  # type: ignore[import-untyped]
from pyrage import x25519

KEY_ERROR = 3
STREAM_ERROR = 4
STDIN = "/dev/stdin"
STDOUT = "/dev/stdout"


def main(arguments: list[str]) -> int:
    mode, *rest = arguments
    try:
        if mode == "encrypt":
            recipients = [x25519.Recipient.from_str(text) for text in rest]
            pyrage.encrypt_file(STDIN, STDOUT, recipients)
        else:
            with open(int(rest[0]), encoding="ascii") as keys:
                identities = [x25519.Identity.from_str(line) for line in keys.read().split()]
            pyrage.decrypt_file(STDIN, STDOUT, identities)
    except pyrage.DecryptError as exc:
        print(exc, file=sys.stderr)
        return KEY_ERROR
    except OSError as exc:
        # pyrage reports an authentication failure inside the stream as an OSError.
        print(exc, file=sys.stderr)
        return STREAM_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
