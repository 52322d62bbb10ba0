#!/usr/bin/python3
"""Generate the Jupyter wire-protocol test vectors under tests/vectors/jwire/.

The frames are produced by Debian's jupyter_client (Session.serialize, write_connection_file),
the implementation our kernels and Jupyter Server actually run, so test_jwire.c checks kbox's
decoder against the reference encoder rather than against itself. The output is committed;
re-run only when the set of vectors changes:

    /usr/bin/python3 tests/vectors/gen_jwire_vectors.py [outdir]

Each vector is a JSON file:
    {"description", "key_b64", "signature_scheme", "frames_b64": [...],
     "expect": {"error": null | "EACCES" | ..., "ids_b64", "header", "parent_header",
                "metadata", "content", "buffers_b64"}}
It also writes seed corpora for the fuzz targets under corpus/ (see fuzz_jwire_decode.c for
the framing: one flags byte, then per frame a little-endian u16 length and the bytes).
"""

import base64
import json
import os
import struct
import sys
import tempfile

from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

# Fixed keys so the files are reproducible in what matters (msg_id and date stay random).
KEY64 = b"8f0c2a6b1e9d4f7a3c5b0e2d6a8f1c4b9e7d3a5c2f0b8e6d4a1c7f3b5e9d2a0c"
KEY100 = bytes(range(1, 101))  # longer than SHA-256's block: HMAC hashes it first
assert len(KEY64) == 64

# Must match FUZZ_KEY in tests/fuzz/fuzz_jwire_decode.c.
FUZZ_KEY = b"kbox-fuzz-key-kbox-fuzz-key-kbox-fuzz-key"
FUZZ_FLAG_KEY, FUZZ_FLAG_FIXSIG, FUZZ_FLAG_REPLAY = 1, 2, 4


def b64(b):
    return base64.b64encode(bytes(b)).decode("ascii")


def unpack_json(frame):
    return json.loads(frame.decode("utf-8"))


def vector(description, key, frames, error=None, ids=(), buffers=()):
    """frames: the full wire list; expectations are read back from the JSON frames."""
    delim = frames.index(b"<IDS|MSG>")
    body = frames[delim + 2 : delim + 6]
    expect = {"error": error}
    if error is None:
        expect.update(
            ids_b64=[b64(i) for i in ids],
            header=unpack_json(body[0]),
            parent_header=unpack_json(body[1]),
            metadata=unpack_json(body[2]),
            content=unpack_json(body[3]),
            buffers_b64=[b64(b) for b in buffers],
        )
    return {
        "description": description,
        "key_b64": b64(key),
        "signature_scheme": "hmac-sha256",
        "frames_b64": [b64(f) for f in frames],
        "expect": expect,
    }


def wire(session, msg, ids=None, buffers=()):
    return session.serialize(msg, ident=list(ids) if ids else None) + list(buffers)


def fuzz_seed(flags, frames):
    out = bytearray([flags])
    for f in frames:
        out += struct.pack("<H", min(len(f), 0xFFFF)) + f[:0xFFFF]
    return bytes(out)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "jwire")
    os.makedirs(outdir, exist_ok=True)
    s64 = Session(key=KEY64, signature_scheme="hmac-sha256", username="alice")
    s100 = Session(key=KEY100, signature_scheme="hmac-sha256", username="bob")
    snull = Session(key=b"", username="carol")
    assert snull.auth is None

    vectors = {}

    content = {
        "code": "print('h\u00e9llo \u2713')\nx = 1",
        "silent": False,
        "store_history": True,
        "user_expressions": {"a": "1+1"},
        "allow_stdin": False,
        "stop_on_error": True,
        "nested": {"list": [1, 2.5, None, True, "\u00fc"], "empty": {}},
    }
    normal = s64.msg("execute_request", content=content)
    normal_frames = wire(s64, normal)
    vectors["normal"] = vector("execute_request, 64-byte key", KEY64, normal_frames)

    bufs = [b"\x00\x01\x02binary\xff", b"", b"x" * 1000]
    comm = s64.msg(
        "comm_msg",
        content={"comm_id": "c0ffee", "data": {"method": "update"}},
        parent=normal,
        metadata={"version": "2.1.0"},
    )
    vectors["buffers"] = vector(
        "comm_msg with three buffers (one empty) and a parent",
        KEY64,
        wire(s64, comm, buffers=bufs),
        buffers=bufs,
    )

    ids = [b"\x00k\x8bEg", b"client-1"]
    reply = s64.msg(
        "execute_reply",
        content={"status": "ok", "execution_count": 7, "user_expressions": {}},
        parent=normal,
    )
    vectors["routing_ids"] = vector(
        "execute_reply behind two routing ids", KEY64, wire(s64, reply, ids=ids), ids=ids
    )

    bad = list(normal_frames)
    sig = bytearray(bad[1])
    sig[10] = ord("0") if sig[10] != ord("0") else ord("1")
    bad[1] = bytes(sig)
    vectors["bad_signature"] = vector("one hex digit of the HMAC changed", KEY64, bad, "EACCES")

    tampered = list(normal_frames)
    tampered[5] = tampered[5].replace(b"x = 1", b"x = 2")
    assert tampered[5] != normal_frames[5]
    vectors["tampered_content"] = vector("content changed after signing", KEY64, tampered, "EACCES")

    unsigned = list(normal_frames)
    unsigned[1] = b""
    vectors["unsigned"] = vector("empty signature with a key set", KEY64, unsigned, "EACCES")

    upper = list(normal_frames)
    upper[1] = upper[1].upper()
    vectors["uppercase_signature"] = vector(
        "the right HMAC spelled in uppercase hex", KEY64, upper, "EACCES"
    )

    long_msg = s100.msg("kernel_info_request")
    vectors["long_key"] = vector(
        "kernel_info_request, 100-byte key (hashed by HMAC)", KEY100, wire(s100, long_msg)
    )

    empty = snull.msg("status", content={"execution_state": "idle"}, parent=normal)
    empty_frames = wire(snull, empty, buffers=[b"buf"])
    assert empty_frames[1] == b""
    vectors["empty_key"] = vector(
        "status with an empty key (no signature)", b"", empty_frames, buffers=[b"buf"]
    )

    for name, v in vectors.items():
        with open(os.path.join(outdir, name + ".json"), "w") as f:
            json.dump(v, f, indent=1, ensure_ascii=False)
            f.write("\n")

    # Connection files written by jupyter_client itself.
    for transport, ip in (("tcp", "127.0.0.1"), ("ipc", "/run/kbox/w1/kernel")):
        fd, tmp = tempfile.mkstemp(".json")
        os.close(fd)
        write_connection_file(
            tmp,
            shell_port=50001,
            iopub_port=50002,
            stdin_port=50003,
            control_port=50004,
            hb_port=50005,
            ip=ip,
            key=KEY64,
            transport=transport,
            kernel_name="python3",
        )
        with open(tmp) as f:
            text = f.read()
        os.unlink(tmp)
        with open(os.path.join(outdir, "conn_%s.json" % transport), "w") as f:
            f.write(text + "\n")

    # Fuzz seeds: the same messages re-signed with the harness's key (FIXSIG re-signs anyway).
    sfuzz = Session(key=FUZZ_KEY, signature_scheme="hmac-sha256")
    seeds = {
        "plain_nokey": fuzz_seed(0, normal_frames),
        "signed": fuzz_seed(FUZZ_FLAG_KEY | FUZZ_FLAG_REPLAY, wire(sfuzz, normal)),
        "fixsig_buffers": fuzz_seed(
            FUZZ_FLAG_KEY | FUZZ_FLAG_FIXSIG, wire(sfuzz, comm, ids=ids, buffers=bufs)
        ),
        "fixsig_reply": fuzz_seed(FUZZ_FLAG_KEY | FUZZ_FLAG_FIXSIG, wire(sfuzz, reply, ids=ids)),
    }
    d = os.path.join(outdir, "corpus", "decode")
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name + ".bin"), "wb") as f:
            f.write(data)
    d = os.path.join(outdir, "corpus", "conn")
    os.makedirs(d, exist_ok=True)
    for transport in ("tcp", "ipc"):
        with open(os.path.join(outdir, "conn_%s.json" % transport)) as src:
            text = src.read()
        with open(os.path.join(d, transport + ".json"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
