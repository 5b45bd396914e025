"""python -m semshare_client generate|stream|tokenize|model-info --target HOST:PORT ...

Exit status: 0 on success, 1 with "CODE: message" on stderr when the server refuses the call, 2
for bad command-line use.
"""

import argparse
import os
import sys

import grpc
from google.protobuf import json_format

from semshare_client import Client


def _parser():
    p = argparse.ArgumentParser(prog="python -m semshare_client",
                                description="Call a semshare server.")
    p.add_argument("command", choices=["generate", "stream", "tokenize", "model-info"])
    p.add_argument("--target", default=os.environ.get("SEMSHARE_TARGET", "127.0.0.1:50051"),
                   help="server address host:port (default $SEMSHARE_TARGET or 127.0.0.1:50051)")
    p.add_argument("--api-key", default=os.environ.get("SEMSHARE_API_KEY"),
                   help="API key (default $SEMSHARE_API_KEY)")
    p.add_argument("--prompt", help="plain prompt")
    p.add_argument("--chat", action="store_true", help="send the prompt as one user message")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens at most (unset: the server's default)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--cache-policy", default="auto", choices=["auto", "bypass", "no_publish"])
    p.add_argument("--similarity-threshold", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (deadline)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--tls-root", help="CA certificate (PEM) that signed the server's")
    p.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    p.add_argument("--json", action="store_true",
                   help="print the whole response (the final message for stream) as JSON")
    return p


def _input(args, parser):
    if args.prompt is None:
        parser.error(f"{args.command} needs --prompt")
    if not args.chat:
        return {"prompt": args.prompt}
    messages = [("system", args.system)] if args.system else []
    messages.append(("user", args.prompt))
    return {"messages": messages}


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    client = Client(args.target, api_key=args.api_key, tls=args.tls,
                    root_certificates=args.tls_root, certificate_chain=args.tls_cert,
                    private_key=args.tls_key, timeout=args.timeout)
    try:
        if args.command == "model-info":
            print(json_format.MessageToJson(client.model_info()))
            return 0
        inp = _input(args, parser)
        if args.command == "tokenize":
            print(json_format.MessageToJson(client.tokenize(**inp)))
            return 0
        sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature,
                        top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop,
                        cache_policy=args.cache_policy,
                        similarity_threshold=args.similarity_threshold)
        prompt = inp.pop("prompt", None)
        if args.command == "generate":
            r = client.generate(prompt, **inp, **sampling)
            if args.json:
                print(json_format.MessageToJson(r))
            else:
                print(r.text)
                print(_summary(r), file=sys.stderr)
            return 0
        last = None
        for piece in client.stream(prompt, **inp, **sampling):
            if isinstance(piece, str):
                if not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            else:
                last = piece
        if args.json:
            print(json_format.MessageToJson(last))
        else:
            sys.stdout.write("\n")
            print(_summary(last), file=sys.stderr)
        return 0
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _summary(r) -> str:
    u, c, t = r.usage, r.cache, r.timings
    return (f"[cache {c.result} similarity {c.similarity:.3f}; prompt {u.prompt_tokens} tokens, "
            f"reused {u.reused_tokens}, generated {u.completion_tokens}; "
            f"ttft {t.ttft_ms:.1f} ms, total {t.total_ms:.1f} ms]")


if __name__ == "__main__":
    sys.exit(main())
