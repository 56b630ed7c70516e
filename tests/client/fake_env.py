"""A fake environment program for evalclient's env task (protocol in docs/CLIENT.md).

Each episode's sample carries "turns": the program asks that many questions,
one per turn, then ends the episode with reward = the fraction of the model's
replies that answered the turn they were asked in (the fake server replies
"Reply to turn N: ..."). Answers come back in a shuffled order within each
batch of lines read, to check that the client matches them by id.
"""
import json
import os
import random


def answer(msg):
    conv = msg["conversation"]
    sample = msg["sample"]
    asked = sum(1 for m in conv if m["role"] == "user")
    if msg["reply"] is None:
        assert conv == [], conv
    else:
        assert conv[-1]["role"] == "assistant" and conv[-1]["content"] == msg["reply"]
    if asked >= sample["turns"]:
        replies = [m["content"] for m in conv if m["role"] == "assistant"]
        good = sum(1 for i, r in enumerate(replies) if r.startswith(f"Reply to turn {i + 1}:"))
        return {"id": msg["id"], "done": True, "reward": good / max(1, len(replies))}
    return {"id": msg["id"], "message": f"question {asked + 1} of episode {msg['id']}"}


def main():
    rng = random.Random(0)
    buf = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        out = [answer(json.loads(line)) for line in lines if line.strip()]
        rng.shuffle(out)  # answer each batch out of order: the client matches by id
        for o in out:
            os.write(1, (json.dumps(o) + "\n").encode())


if __name__ == "__main__":
    main()
