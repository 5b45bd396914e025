#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/text/unicode_utf8.h"
#include "server/grpc_status.h"

namespace semshare::server {
namespace {

absl::Status ParseRaw(const grpc::ByteBuffer* bb, google::protobuf::Message* msg) {
  std::vector<grpc::Slice> slices;
  if (bb == nullptr || !bb->Dump(&slices).ok()) {
    return absl::InvalidArgumentError("the request message could not be read");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (!msg->ParseFromString(bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the request is not a valid ", msg->GetTypeName(),
        " (malformed encoding, or a string field such as prompt, content or stop that is not "
        "valid UTF-8)"));
  }
  return absl::OkStatus();
}

void Serialize(const google::protobuf::Message& msg, grpc::ByteBuffer* out) {
  const std::string bytes = msg.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  *out = grpc::ByteBuffer(&slice, 1);
}

// A client whose deadline passes cancels the call itself, and that cancel can reach the server
// before the server's copy of the deadline (taken when the headers arrived, so later by their
// transit time, which a loaded machine stretches) has passed. A cancel this close to the deadline
// is the deadline's.
constexpr auto kDeadlineSlack = std::chrono::seconds(1);

absl::Status DeadlineStatus() {
  return absl::DeadlineExceededError("the deadline passed before the request finished");
}

// Why a cancelled request stopped: its deadline, or the client.
absl::Status CancelStatus(const grpc::CallbackServerContext* ctx) {
  if (ctx->deadline() - kDeadlineSlack <= std::chrono::system_clock::now()) {
    return DeadlineStatus();
  }
  return absl::CancelledError("the client cancelled the request");
}

// Whether a call that finished its work can still answer: work that ends after the deadline (or
// after a cancel) reaches no one, as the client has already been told why; it is counted so.
absl::Status AnswerStatus(const grpc::CallbackServerContext* ctx) {
  if (ctx->IsCancelled()) return CancelStatus(ctx);
  if (ctx->deadline() <= std::chrono::system_clock::now()) return DeadlineStatus();
  return absl::OkStatus();
}

// Runs `work` (FrontWorker& -> absl::StatusOr<a response message>) on a front worker for a
// unary call
// and finishes `reactor` with its outcome: the response serialised on success, the status
// otherwise, counted under `method` either way. A call whose client gave up while it waited
// in the queue finishes CANCELLED or DEADLINE_EXCEEDED without running; a full queue finishes
// it RESOURCE_EXHAUSTED at once.
template <typename Work>
grpc::ServerUnaryReactor* RunOnWorker(ServiceState* state, const char* method,
                                      grpc::CallbackServerContext* ctx,
                                      grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response,
                                      Work work) {
  absl::Status submitted = state->core()->pipeline->RunFront([=](serving::FrontWorker& w) {
    if (ctx->IsCancelled()) {
      reactor->Finish(state->Complete(method, CancelStatus(ctx)));
      return;
    }
    const auto out = work(w);
    absl::Status s = out.ok() ? AnswerStatus(ctx) : out.status();
    if (s.ok()) Serialize(*out, response);
    reactor->Finish(state->Complete(method, s));
  });
  if (!submitted.ok()) reactor->Finish(state->Complete(method, submitted));
  return reactor;
}

v1::FinishReason ToProto(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kEndOfGeneration:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kCancelled:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

// The figures every Generate response carries, and the metrics of the same request.
void Report(const ServingCore& core, const serving::ServeResult& r, v1::Usage* usage,
            v1::CacheInfo* cache, v1::Timings* timings) {
  usage->set_prompt_tokens(r.gen.prompt_tokens);
  usage->set_completion_tokens(static_cast<int64_t>(r.gen.tokens.size()));
  usage->set_reused_tokens(r.reused_tokens);
  usage->set_recomputed_tokens(r.recomputed_tokens);
  cache->set_result(CacheResultName(r.cache_result));
  cache->set_hit(r.cache_result == CacheResult::kHit);
  cache->set_reference_id(r.reference_id);
  cache->set_similarity(r.similarity < 0 ? 0.0f : r.similarity);
  cache->set_kv_bytes(r.kv_bytes);
  cache->set_published(r.published);
  cache->set_kind(r.hit_kind);
  cache->set_exact_tokens(r.exact_tokens);
  // Accepted to a front worker's start, then that worker's start to the first token and to
  // the end; the queue figure adds the wait for admission into the engine loop.
  const double front_ms = r.front_queue_ms;
  const double queue_ms = front_ms + r.loop_queue_ms;
  timings->set_queue_ms(queue_ms);
  timings->set_lookup_ms(r.lookup_ms);
  timings->set_prefill_ms(r.prefill_ms);
  timings->set_ttft_ms(front_ms + r.first_token_ms);
  timings->set_total_ms(front_ms + r.total_ms);

  RequestFigures f;
  f.cache_result = r.cache_result;
  f.looked_up = r.looked_up;
  f.queue_s = queue_ms / 1e3;
  f.prefill_s = r.prefill_ms / 1e3;
  f.ttft_s = timings->ttft_ms() / 1e3;
  f.total_s = timings->total_ms() / 1e3;
  f.prompt_tokens = r.gen.prompt_tokens;
  f.completion_tokens = static_cast<int64_t>(r.gen.tokens.size());
  f.reused_tokens = r.reused_tokens;
  f.recomputed_tokens = r.recomputed_tokens;
  f.similarity = r.similarity;
  f.hit_kind = r.hit_kind;
  core.metrics->RecordRequest(f);
}

// Builds the ServeRequest of a validated Generate.
std::shared_ptr<serving::ServeRequest> MakeRequest(ValidatedGenerate v, store::Namespace ns) {
  auto ir = std::make_shared<serving::ServeRequest>();
  ir->input = std::move(v.input);
  ir->options = std::move(v.options);
  ir->policy = v.policy;
  ir->threshold = v.threshold;
  ir->ns = std::move(ns);
  return ir;
}

// The streaming side of GenerateStream. The worker pushes text and the final message; gRPC
// callbacks advance the writes. One write is in flight at a time; text that arrives meanwhile
// is appended to one buffer and sent as one message next, so a slow reader costs memory
// bounded by the generated text, never a blocked worker. A recursive mutex because gRPC may
// run a reaction inline from the call that started it.
class StreamChannel {
 public:
  void Bind(grpc::ServerWriteReactor<grpc::ByteBuffer>* r) { reactor_ = r; }

  // False once the stream is broken (client gone) or finished.
  bool PushText(std::string_view text) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (reactor_ == nullptr || broken_ || finish_requested_) return false;
    text_.append(text);
    if (!writing_) Advance();
    return true;
  }
  // The last message (done = true), then the OK status.
  void Finish(const v1::GenerateStreamResponse& last) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    final_ = last.SerializeAsString();
    has_final_ = true;
    status_ = grpc::Status::OK;
    finish_requested_ = true;
    if (!writing_) Advance();
  }
  void Fail(const grpc::Status& status) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    text_.clear();
    has_final_ = false;
    status_ = status;
    finish_requested_ = true;
    if (!writing_) Advance();
  }
  bool broken() const { return broken_.load(); }

  void OnWriteDone(bool ok) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      broken_ = true;
      text_.clear();
      has_final_ = false;
    }
    Advance();
  }
  void OnCancel() { broken_ = true; }
  void OnDone() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    reactor_ = nullptr;
  }

 private:
  // With mu_ held and no write in flight: the next write, or Finish when all is sent.
  void Advance() {
    if (reactor_ == nullptr || finished_) return;
    if (!text_.empty() && !broken_) {
      v1::GenerateStreamResponse m;
      m.set_text(std::move(text_));
      text_.clear();
      Write(m.SerializeAsString());
      return;
    }
    if (has_final_ && !broken_) {
      has_final_ = false;
      Write(std::move(final_));
      return;
    }
    if (finish_requested_) {
      finished_ = true;
      reactor_->Finish(status_);
    }
  }
  void Write(std::string bytes) {
    grpc::Slice slice(bytes.data(), bytes.size());
    inflight_ = grpc::ByteBuffer(&slice, 1);
    writing_ = true;
    reactor_->StartWrite(&inflight_);
  }

  std::recursive_mutex mu_;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* reactor_ = nullptr;  // null after OnDone
  grpc::ByteBuffer inflight_;
  std::string text_, final_;
  bool has_final_ = false, writing_ = false, finish_requested_ = false, finished_ = false;
  grpc::Status status_;
  std::atomic<bool> broken_{false};
};

class StreamReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit StreamReactor(std::shared_ptr<StreamChannel> ch) : ch_(std::move(ch)) {
    ch_->Bind(this);
  }
  void OnWriteDone(bool ok) override { ch_->OnWriteDone(ok); }
  void OnCancel() override { ch_->OnCancel(); }
  void OnDone() override {
    ch_->OnDone();
    delete this;
  }

 private:
  std::shared_ptr<StreamChannel> ch_;
};

// A reactor that is already finished with `status` (errors before any work was queued).
grpc::ServerWriteReactor<grpc::ByteBuffer>* FailedStream(const grpc::Status& status) {
  auto ch = std::make_shared<StreamChannel>();
  auto* r = new StreamReactor(ch);
  ch->Fail(status);
  return r;
}

std::string PieceText(const engine::Tokenizer& tok, int32_t id) {
  const std::string bytes = tok.TokenBytes(id);
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const engine::utf8::Seq seq = engine::utf8::DecodeAt(bytes, i);
    if (seq.status != engine::utf8::SeqStatus::kOk) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "<0x%02X>", static_cast<unsigned char>(bytes[i]));
      out += hex;
      ++i;
    } else {
      out.append(bytes, i, seq.length);
      i += seq.length;
    }
  }
  return out;
}

// The common start of the methods that take a prompt input (Tokenize, AddReference,
// LookupReference): admit, parse the raw bytes into `req`, validate its input. On refusal the
// reactor is finished with the error and null is returned.
template <typename Req>
std::shared_ptr<PromptInput> AdmitPromptCall(ServiceState* state, const char* method,
                                             grpc::CallbackServerContext* ctx,
                                             const grpc::ByteBuffer* request,
                                             grpc::ServerUnaryReactor* reactor, Req* req,
                                             Principal* principal) {
  absl::StatusOr<PromptInput> in = absl::InternalError("unset");
  absl::StatusOr<Principal> p = state->Admit(ctx, /*admin=*/false);
  if (!p.ok()) {
    in = p.status();
  } else if (absl::Status parsed = ParseRaw(request, req); !parsed.ok()) {
    in = parsed;
  } else {
    *principal = *std::move(p);
    in = ValidatePromptInput(req->input_case() == Req::kPrompt, req->prompt(),
                             req->has_messages() ? &req->messages() : nullptr,
                             state->core()->limits);
  }
  if (!in.ok()) {
    reactor->Finish(state->Complete(method, in.status()));
    return nullptr;
  }
  return std::make_shared<PromptInput>(*std::move(in));
}

}  // namespace

// ---- ServiceState ----

absl::StatusOr<Principal> ServiceState::Admit(grpc::CallbackServerContext* ctx, bool admin) const {
  if (draining_) {
    return absl::UnavailableError("the server is draining for shutdown; retry on another replica");
  }
  if (core_.load() == nullptr) {
    return absl::UnavailableError("the model is still loading; retry shortly");
  }
  Principal p{"default", Role::kAdmin};
  if (keys_.has_value()) {
    std::string_view authorization;
    const auto& md = ctx->client_metadata();
    if (auto it = md.find("authorization"); it != md.end()) {
      authorization = std::string_view(it->second.data(), it->second.size());
    }
    absl::StatusOr<Principal> auth = keys_->Authenticate(authorization);
    if (!auth.ok()) return auth.status();
    p = *std::move(auth);
  }
  if (admin && p.role != Role::kAdmin) {
    return absl::PermissionDeniedError(
        "this method needs an API key with role admin (CacheAdmin service)");
  }
  return p;
}

store::Namespace ServiceState::NamespaceOf(const Principal& p) const {
  return store::Namespace{p.tenant, core()->model->fingerprint};
}

grpc::Status ServiceState::Complete(const char* method, const absl::Status& s) const {
  grpc::Status g = ToGrpcStatus(s);
  if (ServingCore* core = core_.load(); core != nullptr) {
    core->metrics->CountRequest(method, CodeName(g.error_code()));
  }
  return g;
}

// ---- SemShare ----

grpc::ServerUnaryReactor* SemShareService::Generate(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServiceState* state = state_;
  auto fail = [&](const absl::Status& s) {
    reactor->Finish(state->Complete("Generate", s));
    return reactor;
  };
  absl::StatusOr<Principal> p = state->Admit(ctx, /*admin=*/false);
  if (!p.ok()) return fail(p.status());
  ServingCore* core = state->core();
  v1::GenerateRequest r;
  if (auto s = ParseRaw(request, &r); !s.ok()) return fail(s);
  absl::StatusOr<ValidatedGenerate> v = ValidateGenerateRequest(r, core->limits);
  if (!v.ok()) return fail(v.status());
  std::shared_ptr<serving::ServeRequest> ir = MakeRequest(*std::move(v), state->NamespaceOf(*p));
  ir->cancelled = [ctx] { return ctx->IsCancelled(); };
  absl::Status submitted =
      core->pipeline->Generate(ir, [=](absl::StatusOr<serving::ServeResult> res) {
        absl::Status s = res.ok() ? AnswerStatus(ctx) : res.status();
        if (!s.ok()) {
          if (absl::IsCancelled(s) || ctx->IsCancelled()) s = CancelStatus(ctx);
          reactor->Finish(state->Complete("Generate", s));
          return;
        }
        v1::GenerateResponse out;
        out.set_text(res->gen.text);
        out.set_finish_reason(ToProto(res->gen.finish));
        out.set_model(absl::StrCat(core->model->config.name, "@", core->model->fingerprint));
        Report(*core, *res, out.mutable_usage(), out.mutable_cache(), out.mutable_timings());
        Serialize(out, response);
        reactor->Finish(state->Complete("Generate", absl::OkStatus()));
      });
  if (!submitted.ok()) return fail(submitted);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SemShareService::GenerateStream(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) {
  ServiceState* state = state_;
  auto fail = [&](const absl::Status& s) {
    return FailedStream(state->Complete("GenerateStream", s));
  };
  absl::StatusOr<Principal> p = state->Admit(ctx, /*admin=*/false);
  if (!p.ok()) return fail(p.status());
  ServingCore* core = state->core();
  v1::GenerateRequest r;
  if (auto s = ParseRaw(request, &r); !s.ok()) return fail(s);
  absl::StatusOr<ValidatedGenerate> v = ValidateGenerateRequest(r, core->limits);
  if (!v.ok()) return fail(v.status());
  std::shared_ptr<serving::ServeRequest> ir = MakeRequest(*std::move(v), state->NamespaceOf(*p));
  auto ch = std::make_shared<StreamChannel>();
  auto* reactor = new StreamReactor(ch);
  ir->cancelled = [ctx, ch] { return ch->broken() || ctx->IsCancelled(); };
  ir->on_text = [ch](std::string_view piece) { return ch->PushText(piece); };
  absl::Status submitted =
      core->pipeline->Generate(ir, [=](absl::StatusOr<serving::ServeResult> res) {
        if (!res.ok()) {
          absl::Status s = res.status();
          if (absl::IsCancelled(s) || ir->cancelled()) s = CancelStatus(ctx);
          ch->Fail(state->Complete("GenerateStream", s));
          return;
        }
        v1::GenerateStreamResponse last;
        last.set_done(true);
        last.set_finish_reason(ToProto(res->gen.finish));
        Report(*core, *res, last.mutable_usage(), last.mutable_cache(), last.mutable_timings());
        state->Complete("GenerateStream", absl::OkStatus());
        ch->Finish(last);
      });
  if (!submitted.ok()) {
    ch->Fail(state->Complete("GenerateStream", submitted));
  }
  return reactor;
}

grpc::ServerUnaryReactor* SemShareService::Tokenize(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServiceState* state = state_;
  v1::TokenizeRequest r;
  Principal principal;
  std::shared_ptr<PromptInput> input =
      AdmitPromptCall(state, "Tokenize", ctx, request, reactor, &r, &principal);
  if (input == nullptr) return reactor;
  ServingCore* core = state->core();
  return RunOnWorker(state, "Tokenize", ctx, reactor, response,
                     [=](serving::FrontWorker& w) -> absl::StatusOr<v1::TokenizeResponse> {
                       absl::StatusOr<std::vector<int32_t>> ids = w.Tokenize(*input);
                       if (!ids.ok()) return ids.status();
                       v1::TokenizeResponse out;
                       for (int32_t id : *ids) {
                         out.add_token_ids(id);
                         out.add_pieces(PieceText(*core->model->tokenizer, id));
                       }
                       return out;
                     });
}

grpc::ServerUnaryReactor* SemShareService::AddReference(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServiceState* state = state_;
  v1::AddReferenceRequest r;
  Principal principal;
  std::shared_ptr<PromptInput> input =
      AdmitPromptCall(state, "AddReference", ctx, request, reactor, &r, &principal);
  if (input == nullptr) return reactor;
  const store::Namespace ns = state->NamespaceOf(principal);
  return RunOnWorker(state, "AddReference", ctx, reactor, response,
                     [=](serving::FrontWorker& w) -> absl::StatusOr<v1::AddReferenceResponse> {
                       absl::StatusOr<store::RecordHandle> rec = w.AddReference(*input, ns);
                       if (!rec.ok()) return rec.status();
                       v1::AddReferenceResponse out;
                       out.set_reference_id((*rec)->id);
                       out.set_prompt_tokens(static_cast<int64_t>((*rec)->ids.size()));
                       out.set_kv_bytes((*rec)->kv.ByteSize());
                       return out;
                     });
}

grpc::ServerUnaryReactor* SemShareService::LookupReference(grpc::CallbackServerContext* ctx,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServiceState* state = state_;
  v1::LookupReferenceRequest r;
  Principal principal;
  std::shared_ptr<PromptInput> input =
      AdmitPromptCall(state, "LookupReference", ctx, request, reactor, &r, &principal);
  if (input == nullptr) return reactor;
  ServingCore* core = state->core();
  const float t = r.similarity_threshold();
  if (!std::isfinite(t) || t < 0 || t > 1) {
    reactor->Finish(state->Complete(
        "LookupReference",
        absl::InvalidArgumentError(absl::StrCat(
            "similarity_threshold must be in (0, 1] (0 = the server's default), got ", t))));
    return reactor;
  }
  const float threshold = t == 0 ? core->limits.default_threshold : t;
  const store::Namespace ns = state->NamespaceOf(principal);
  return RunOnWorker(state, "LookupReference", ctx, reactor, response,
                     [=](serving::FrontWorker& w) -> absl::StatusOr<v1::LookupReferenceResponse> {
                       absl::StatusOr<serving::LookupResult> res = w.Lookup(*input, ns, threshold);
                       if (!res.ok()) return res.status();
                       v1::LookupReferenceResponse out;
                       out.set_hit(res->hit);
                       out.set_reference_id(res->reference_id);
                       out.set_similarity(res->similarity < 0 ? 0.0f : res->similarity);
                       out.set_candidates(res->candidates);
                       out.set_prompt_tokens(res->prompt_tokens);
                       out.set_lookup_ms(res->lookup_ms);
                       return out;
                     });
}

grpc::ServerUnaryReactor* SemShareService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                        const v1::GetModelInfoRequest*,
                                                        v1::GetModelInfoResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Principal> p = state_->Admit(ctx, false);
  if (!p.ok()) {
    reactor->Finish(state_->Complete("GetModelInfo", p.status()));
    return reactor;
  }
  const ServingCore& core = *state_->core();
  const engine::ModelConfig& c = core.model->config;
  out->set_name(c.name);
  out->set_architecture(engine::ArchName(c.arch));
  out->set_fingerprint(core.model->fingerprint);
  out->set_context_length(c.max_context);
  out->set_vocab_size(c.vocab_size);
  out->set_n_layers(c.n_layers);
  out->set_backend(core.backend_name);
  out->set_max_prompt_tokens(core.pipeline->serving().max_prompt_tokens);
  out->set_max_new_tokens(core.limits.max_new_tokens);
  out->set_min_reuse_tokens(core.pipeline->serving().reuse.min_reuse_tokens);
  out->set_similarity_threshold(core.limits.default_threshold);
  reactor->Finish(state_->Complete("GetModelInfo", absl::OkStatus()));
  return reactor;
}

// ---- CacheAdmin ----

grpc::ServerUnaryReactor* CacheAdminService::GetStats(grpc::CallbackServerContext* ctx,
                                                      const v1::GetStatsRequest*,
                                                      v1::GetStatsResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Principal> p = state_->Admit(ctx, /*admin=*/true);
  if (!p.ok()) {
    reactor->Finish(state_->Complete("GetStats", p.status()));
    return reactor;
  }
  const ServingCore& core = *state_->core();
  const store::StoreStats s = core.store->Stats();
  auto add = [&](const char* name, const store::TierStats& t, int64_t budget) {
    v1::TierStats* ts = out->add_tiers();
    ts->set_tier(name);
    ts->set_entries(t.entries);
    ts->set_bytes(t.bytes);
    ts->set_byte_budget(budget);
    ts->set_hits(t.hits);
    ts->set_misses(t.misses);
    ts->set_evictions(t.evictions);
    ts->set_errors(t.errors);
  };
  const ServerConfig& cfg = state_->config();
  add("memory", s.memory, cfg.cache_memory_bytes);
  if (s.has_disk) add("disk", s.disk, cfg.cache_disk_bytes);
  if (s.has_redis) add("redis", s.redis, 0);
  out->set_published(s.published);
  out->set_publish_dropped(s.publish_dropped);
  out->set_publish_failed(s.publish_failed);
  out->set_requests_running(core.pipeline->running());
  out->set_requests_waiting(core.pipeline->waiting());
  reactor->Finish(state_->Complete("GetStats", absl::OkStatus()));
  return reactor;
}

grpc::ServerUnaryReactor* CacheAdminService::ListReferences(
    grpc::CallbackServerContext* ctx, const v1::ListReferencesRequest* request,
    v1::ListReferencesResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Principal> p = state_->Admit(ctx, /*admin=*/true);
  if (!p.ok()) {
    reactor->Finish(state_->Complete("ListReferences", p.status()));
    return reactor;
  }
  if (request->limit() < 0 || request->limit() > 10000) {
    reactor->Finish(state_->Complete(
        "ListReferences", absl::InvalidArgumentError(absl::StrCat(
                              "limit must be in [0, 10000] (0 = 100), got ", request->limit()))));
    return reactor;
  }
  const ServingCore& core = *state_->core();
  const std::string tenant = request->tenant().empty() ? p->tenant : request->tenant();
  std::vector<store::RecordInfo> all = core.store->List();
  std::vector<store::RecordInfo> rows;
  for (store::RecordInfo& r : all) {
    if (r.ns.model_fingerprint != core.model->fingerprint) continue;
    if (tenant != "*" && r.ns.tenant != tenant) continue;
    rows.push_back(std::move(r));
  }
  std::sort(rows.begin(), rows.end(), [](const store::RecordInfo& a, const store::RecordInfo& b) {
    return a.last_used_ms > b.last_used_ms;
  });
  out->set_total(static_cast<int64_t>(rows.size()));
  const size_t limit = request->limit() == 0 ? 100 : static_cast<size_t>(request->limit());
  for (size_t i = 0; i < rows.size() && i < limit; ++i) {
    v1::ReferenceInfo* ri = out->add_references();
    ri->set_id(rows[i].id);
    ri->set_tenant(rows[i].ns.tenant);
    ri->set_tokens(rows[i].tokens);
    ri->set_bytes(rows[i].bytes);
    ri->set_hits(rows[i].hits);
    ri->set_last_used_unix_ms(rows[i].last_used_ms);
    ri->set_created_unix_ms(rows[i].created_ms);
  }
  reactor->Finish(state_->Complete("ListReferences", absl::OkStatus()));
  return reactor;
}

grpc::ServerUnaryReactor* CacheAdminService::DeleteReference(
    grpc::CallbackServerContext* ctx, const v1::DeleteReferenceRequest* request,
    v1::DeleteReferenceResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Principal> p = state_->Admit(ctx, /*admin=*/true);
  if (!p.ok()) {
    reactor->Finish(state_->Complete("DeleteReference", p.status()));
    return reactor;
  }
  const ServingCore& core = *state_->core();
  bool found = false;
  for (const store::RecordInfo& r : core.store->List()) found = found || r.id == request->id();
  absl::Status s = found ? core.store->Delete(request->id())
                         : absl::NotFoundError(absl::StrCat("no reference with id ", request->id(),
                                                            " in any tier"));
  reactor->Finish(state_->Complete("DeleteReference", s));
  return reactor;
}

grpc::ServerUnaryReactor* CacheAdminService::Clear(grpc::CallbackServerContext* ctx,
                                                   const v1::ClearRequest*,
                                                   v1::ClearResponse* out) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Principal> p = state_->Admit(ctx, /*admin=*/true);
  if (!p.ok()) {
    reactor->Finish(state_->Complete("Clear", p.status()));
    return reactor;
  }
  const ServingCore& core = *state_->core();
  out->set_removed(static_cast<int64_t>(core.store->List().size()));
  reactor->Finish(state_->Complete("Clear", core.store->Clear()));
  return reactor;
}

}  // namespace semshare::server
