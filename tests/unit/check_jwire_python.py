#!/usr/bin/python3
"""Cross-check kbox's wire codec against Debian's jupyter_client, live, in both directions.

kbox -> Python: jwire_tool encodes messages (keys of 0, 16, 32, 64, 100 and 200 bytes, with
routing ids and buffers) and jupyter_client.session.Session.deserialize must accept them with
the same fields; a flipped byte must make it raise.
Python -> kbox: Session.serialize output is fed to jwire_tool decode, which must return the
same fields, and -EACCES (-13) for a tampered copy.

Usage: /usr/bin/python3 check_jwire_python.py path/to/jwire_tool
"""

import base64
import datetime
import json
import os
import subprocess
import sys

from jupyter_client.session import Session

TOOL = sys.argv[1] if len(sys.argv) > 1 else "jwire_tool"
EACCES = 13
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def run(mode, req):
    p = subprocess.run(
        [TOOL, mode], input=json.dumps(req).encode(), capture_output=True, check=False
    )
    if p.returncode != 0:
        raise SystemExit("jwire_tool %s failed: %s" % (mode, p.stderr.decode()))
    return json.loads(p.stdout)


def b64e(b):
    return base64.b64encode(b).decode()


def b64d(s):
    return base64.b64decode(s)


def session_for(key):
    s = Session(key=key, signature_scheme="hmac-sha256", username="py")
    assert (s.auth is None) == (len(key) == 0)
    return s


CONTENT = {
    "code": "print('\u00e9\u2713')\nx = [1, 2]",
    "silent": False,
    "nested": {"l": [1, 2.5, None, True], "s": "tab\tquote\"back\\slash"},
}
PARENT = {
    "msg_id": "parent-1",
    "msg_type": "execute_request",
    "session": "sess-p",
    "username": "u",
    "date": "2026-01-01T00:00:00.000000Z",
    "version": "5.3",
}


def kbox_to_python(key, ids, buffers):
    req = {
        "key_hex": key.hex(),
        "msg_type": "execute_request",
        "session": "sess-kbox",
        "username": "kbox",
        "parent_header": PARENT,
        "metadata": {"cell": "c-1"},
        "content": CONTENT,
        "ids_b64": [b64e(i) for i in ids],
        "buffers_b64": [b64e(b) for b in buffers],
    }
    frames = [b64d(f) for f in run("encode", req)["frames_b64"]]
    what = "kbox->python key=%d ids=%d bufs=%d" % (len(key), len(ids), len(buffers))

    s = session_for(key)
    idents, msg_list = s.feed_identities(frames, copy=True)
    check(idents == ids, what + ": routing ids")
    check((msg_list[0] == b"") == (len(key) == 0), what + ": signature presence")
    try:
        msg = s.deserialize(msg_list, content=True, copy=True)
    except Exception as e:  # noqa: BLE001 - any rejection is the failure we report
        check(False, "%s: deserialize raised %r" % (what, e))
        return
    h = msg["header"]
    check(msg["msg_type"] == "execute_request", what + ": msg_type")
    check(h["version"] == "5.3", what + ": version")
    check(h["session"] == "sess-kbox" and h["username"] == "kbox", what + ": session/username")
    check(len(h["msg_id"]) == 36 and h["msg_id"][14] == "4", what + ": uuid4 msg_id")
    # extract_dates turned the date into an aware datetime; the raw text must also match the
    # exact format Jupyter Server's gateway client parses.
    check(isinstance(h["date"], datetime.datetime) and h["date"].tzinfo, what + ": date")
    raw_header = json.loads(msg_list[1])
    datetime.datetime.strptime(raw_header["date"], "%Y-%m-%dT%H:%M:%S.%fZ")
    check(msg["parent_header"]["msg_id"] == "parent-1", what + ": parent msg_id")
    check(msg["metadata"] == {"cell": "c-1"}, what + ": metadata")
    check(msg["content"] == CONTENT, what + ": content")
    check([bytes(b) for b in msg["buffers"]] == buffers, what + ": buffers")

    if key:
        # Replaying the same frames on the same session is refused by jupyter_client too.
        try:
            s.deserialize(msg_list)
            check(False, what + ": python accepted a replay")
        except ValueError:
            pass
        # Negative control: the checker must be able to fail.
        t = list(msg_list)
        t[4] = t[4].replace(b"silent", b"Silent")
        try:
            session_for(key).deserialize(t)
            check(False, what + ": python accepted tampered content")
        except ValueError:
            pass


def python_to_kbox(key, ids, buffers):
    what = "python->kbox key=%d ids=%d bufs=%d" % (len(key), len(ids), len(buffers))
    s = session_for(key)
    parent = s.msg("execute_request", content={"code": "1"})
    msg = s.msg("execute_reply", content=CONTENT, parent=parent, metadata={"m": 1})
    frames = s.serialize(msg, ident=list(ids) or None) + list(buffers)
    out = run("decode", {"key_hex": key.hex(), "frames_b64": [b64e(f) for f in frames]})
    check(out["error"] == 0, "%s: decode error %s" % (what, out["error"]))
    if out["error"] != 0:
        return
    delim = frames.index(b"<IDS|MSG>")
    for i, name in enumerate(("header", "parent_header", "metadata", "content")):
        check(out[name] == json.loads(frames[delim + 2 + i]), what + ": " + name)
    check([b64d(i) for i in out["ids_b64"]] == list(ids), what + ": ids")
    check([b64d(b) for b in out["buffers_b64"]] == list(buffers), what + ": buffers")
    check(out["parent_header"]["msg_id"] == parent["header"]["msg_id"], what + ": parent id")

    if key:
        t = list(frames)
        t[delim + 5] = t[delim + 5].replace(b"code", b"kode")
        out = run("decode", {"key_hex": key.hex(), "frames_b64": [b64e(f) for f in t]})
        check(out["error"] == -EACCES, what + ": tampered copy gave %s" % out["error"])
        other = bytes([key[0] ^ 1]) + key[1:]
        out = run("decode", {"key_hex": other.hex(), "frames_b64": [b64e(f) for f in frames]})
        check(out["error"] == -EACCES, what + ": wrong key gave %s" % out["error"])


def main():
    keys = [b"", os.urandom(16), os.urandom(32), b"k" * 64, os.urandom(64), os.urandom(100)]
    keys.append(os.urandom(200))
    shapes = [([], []), ([b"\x00\x01routing"], []), ([b"a", b"b"], [b"\x00\xff", b"", b"z" * 5000])]
    n = 0
    for key in keys:
        for ids, buffers in shapes:
            kbox_to_python(key, ids, buffers)
            python_to_kbox(key, ids, buffers)
            n += 2
    if failures:
        print("%d of the checks failed" % len(failures), file=sys.stderr)
        return 1
    print("jwire cross-check: %d cases against jupyter_client OK" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
