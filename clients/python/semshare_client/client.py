"""`Client`: the semshare API (proto/semshare/v1/semshare.proto) over grpcio.

Every method raises grpc.RpcError on failure; `e.code()` is the canonical gRPC status code and
`e.details()` the server's message, which says what to change (see the proto's header for the
codes). Responses are the generated protobuf messages (`semshare_client.pb2`), so every field the
proto documents is there.
"""

import os
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import grpc

from semshare_client._stubs import load

pb2, pb2_grpc = load()

PemSource = Union[None, bytes, str, os.PathLike]
# Messages: ("user", "Hi") pairs, {"role": ..., "content": ...} dicts or pb2.ChatMessage.
MessageLike = Union[Tuple[str, str], dict, "pb2.ChatMessage"]

_POLICIES = {
    "auto": pb2.CACHE_POLICY_AUTO,
    "bypass": pb2.CACHE_POLICY_BYPASS,
    "no_publish": pb2.CACHE_POLICY_NO_PUBLISH,
    "no-publish": pb2.CACHE_POLICY_NO_PUBLISH,
}


def _pem(source: PemSource) -> Optional[bytes]:
    """PEM bytes from bytes as is, or from a file path."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as f:
        return f.read()


def _chat(out, messages: Iterable[MessageLike]) -> None:
    out.SetInParent()  # present even when empty (the server then says what is wrong)
    for m in messages:
        if isinstance(m, pb2.ChatMessage):
            out.messages.append(m)
        elif isinstance(m, dict):
            out.messages.add(role=m["role"], content=m.get("content", ""))
        else:
            role, content = m
            out.messages.add(role=role, content=content)


def _set_input(req, prompt: Optional[str], messages: Optional[Iterable[MessageLike]]) -> None:
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt or messages")
    if prompt is not None:
        req.prompt = prompt
    else:
        _chat(req.messages, messages)


class Client:
    """A connection to one semshare server.

    target: "host:port". api_key: sent as `authorization: Bearer <key>` on every call (needed
    when the server runs with --api-keys). TLS is used when `tls` is true or any of
    root_certificates (the CA that signed the server's certificate; None = the system's roots),
    certificate_chain / private_key (the client's certificate for mutual TLS) is given; each is
    PEM bytes or a file path. timeout: seconds per call (a deadline; the server stops the request
    at its next step when it passes), None = no deadline; each method takes its own `timeout` too.
    options: extra grpc channel options, e.g. [("grpc.ssl_target_name_override", "localhost")].
    """

    def __init__(self, target: str, api_key: Optional[str] = None, *, tls: bool = False,
                 root_certificates: PemSource = None, certificate_chain: PemSource = None,
                 private_key: PemSource = None, timeout: Optional[float] = 60.0,
                 options: Sequence[Tuple[str, object]] = ()):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        use_tls = tls or root_certificates is not None or certificate_chain is not None
        if use_tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(private_key),
                certificate_chain=_pem(certificate_chain))
            self.channel = grpc.secure_channel(target, creds, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.semshare = pb2_grpc.SemShareStub(self.channel)
        self.admin = pb2_grpc.CacheAdminStub(self.channel)

    # ---- plumbing ----

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _kw(self, timeout):
        return {"timeout": self.timeout if timeout is None else timeout,
                "metadata": self._metadata}

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects (grpc.FutureTimeoutError after `timeout` s)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # ---- SemShare ----

    @staticmethod
    def generate_request(prompt: Optional[str] = None, *,
                         messages: Optional[Iterable[MessageLike]] = None,
                         max_tokens: Optional[int] = None,
                         temperature: float = 0.0, top_p: float = 0.0, top_k: int = 0,
                         seed: int = 0, stop: Sequence[str] = (), ignore_eos: bool = False,
                         cache_policy: Union[str, int] = "auto",
                         similarity_threshold: float = 0.0):
        """A GenerateRequest; the defaults are the proto's (max_tokens None = unset = the
        server's default; 0 for the other numbers = unset)."""
        req = pb2.GenerateRequest()
        _set_input(req, prompt, messages)
        s = req.sampling
        if max_tokens is not None:
            s.max_tokens = max_tokens
        s.temperature = temperature
        s.top_p = top_p
        s.top_k = top_k
        s.seed = seed
        s.stop.extend(stop)
        s.ignore_eos = ignore_eos
        if isinstance(cache_policy, str):
            if cache_policy.lower() not in _POLICIES:
                raise ValueError(f"cache_policy {cache_policy!r}: use auto, bypass or no_publish")
            cache_policy = _POLICIES[cache_policy.lower()]
        req.cache_policy = cache_policy
        req.similarity_threshold = similarity_threshold
        return req

    def generate(self, prompt: Optional[str] = None, *, timeout: Optional[float] = None,
                 request=None, **kwargs):
        """Unary Generate -> pb2.GenerateResponse (text, finish_reason, usage, cache, timings).

        kwargs are those of generate_request(); or pass a ready `request`.
        """
        if request is None:
            request = self.generate_request(prompt, **kwargs)
        return self.semshare.Generate(request, **self._kw(timeout))

    def stream(self, prompt: Optional[str] = None, *, timeout: Optional[float] = None,
               request=None, **kwargs) -> Iterator[Union[str, "pb2.GenerateStreamResponse"]]:
        """GenerateStream: yields each text piece (str) as it arrives, then the final
        pb2.GenerateStreamResponse (done = true: finish reason, usage, cache info, timings).

        Closing the generator early (break, .close(), garbage collection) cancels the call, and
        the server stops the request at its next step.
        """
        if request is None:
            request = self.generate_request(prompt, **kwargs)
        call = self.semshare.GenerateStream(request, **self._kw(timeout))
        finished = False
        try:
            for msg in call:
                if msg.done:
                    finished = True
                    yield msg
                elif msg.text:
                    yield msg.text
        finally:
            if not finished:
                call.cancel()

    def tokenize(self, prompt: Optional[str] = None, *,
                 messages: Optional[Iterable[MessageLike]] = None,
                 timeout: Optional[float] = None):
        """pb2.TokenizeResponse: token_ids and their pieces (with the chat template for
        messages)."""
        req = pb2.TokenizeRequest()
        _set_input(req, prompt, messages)
        return self.semshare.Tokenize(req, **self._kw(timeout))

    def add_reference(self, prompt: Optional[str] = None, *,
                      messages: Optional[Iterable[MessageLike]] = None,
                      timeout: Optional[float] = None):
        """Prefills a prompt into the store (in the caller's tenant) -> AddReferenceResponse."""
        req = pb2.AddReferenceRequest()
        _set_input(req, prompt, messages)
        return self.semshare.AddReference(req, **self._kw(timeout))

    def lookup_reference(self, prompt: Optional[str] = None, *,
                         messages: Optional[Iterable[MessageLike]] = None,
                         similarity_threshold: float = 0.0, timeout: Optional[float] = None):
        """Dry run of a Generate's lookup -> LookupReferenceResponse (hit, reference_id,
        similarity, candidates)."""
        req = pb2.LookupReferenceRequest(similarity_threshold=similarity_threshold)
        _set_input(req, prompt, messages)
        return self.semshare.LookupReference(req, **self._kw(timeout))

    def model_info(self, timeout: Optional[float] = None):
        """pb2.GetModelInfoResponse: the model, its limits and the server's reuse settings."""
        return self.semshare.GetModelInfo(pb2.GetModelInfoRequest(), **self._kw(timeout))

    # ---- CacheAdmin (the API key needs role admin) ----

    def stats(self, timeout: Optional[float] = None):
        return self.admin.GetStats(pb2.GetStatsRequest(), **self._kw(timeout))

    def list_references(self, tenant: str = "", limit: int = 0,
                        timeout: Optional[float] = None):
        """tenant "" = the caller's, "*" = every tenant; limit 0 = 100."""
        return self.admin.ListReferences(pb2.ListReferencesRequest(tenant=tenant, limit=limit),
                                         **self._kw(timeout))

    def delete_reference(self, reference_id: int, timeout: Optional[float] = None):
        return self.admin.DeleteReference(pb2.DeleteReferenceRequest(id=reference_id),
                                          **self._kw(timeout))

    def clear(self, timeout: Optional[float] = None):
        """Removes every reference of every tenant -> ClearResponse(removed)."""
        return self.admin.Clear(pb2.ClearRequest(), **self._kw(timeout))
