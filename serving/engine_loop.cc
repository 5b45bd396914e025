#include "serving/engine_loop.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"

namespace semshare::serving {
namespace {

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

struct EngineLoop::Seq {
  std::unique_ptr<LoopRequest> req;
  std::unique_ptr<engine::TokenStream> stream;  // null for prefill_only
  std::unique_ptr<SeqKv> kv;                    // null while waiting
  Phase phase = Phase::kWaiting;
  // What the prefill computes: the prompt, plus the tokens sampled before a preemption.
  std::vector<int32_t> tokens;
  std::vector<int32_t> pos;  // [tokens.size()] 0..n-1
  int64_t prefilled = 0;     // leading tokens whose KV is in kv
  bool hit_pending = false;  // the reference plan still to run
  int32_t next_pos = 0;      // position of the next token fed
  int32_t pending = -1;      // decode: the sampled token to feed next
  int32_t pending_pos = 0;   // its position (the batch item points here)
  int64_t chunk = 0;         // prefill tokens in this iteration's batch
  uint64_t order = 0;        // admission order (preemption takes the newest)
  bool prefilled_once = false;
  int64_t published_bytes = 0;  // KV bytes in the observer's last figures
  std::vector<float> logits;    // [vocab]
  LoopResult result;
  Clock::time_point submitted, admitted, last_token;
  bool was_admitted = false;

  bool cancelled() const { return req->cancelled && req->cancelled(); }
  // Rows this sequence holds or has reserved: a prefill reserves its whole input.
  int64_t reserved_rows() const {
    const int64_t held = kv != nullptr ? kv->rows() : 0;
    return phase == Phase::kPrefill ? std::max<int64_t>(held, static_cast<int64_t>(tokens.size()))
                                    : held;
  }
};

EngineLoop::EngineLoop(std::unique_ptr<BatchRunner> runner, const LoopOptions& options,
                       LoopObserver* observer)
    : runner_(std::move(runner)),
      options_(options),
      observer_(observer),
      budget_rows_(std::max<int64_t>(1, options.kv_cache_bytes / runner_->row_bytes())) {
  stats_.kv_budget = options.kv_cache_bytes;
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

absl::Status EngineLoop::Submit(std::unique_ptr<LoopRequest> request) {
  const int64_t n = static_cast<int64_t>(request->ids.size());
  if (n == 0) return absl::InvalidArgumentError("the prompt has no tokens");
  const int64_t need = n + (request->prefill_only ? 0 : request->options.max_tokens);
  if (need > budget_rows_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the prompt (", n, " tokens) + max_tokens needs ", need * runner_->row_bytes(),
                     " bytes of KV cache; this server's whole budget (--kv-cache-bytes) is ",
                     options_.kv_cache_bytes, " bytes: shorten the prompt or max_tokens"));
  }
  auto seq = std::make_unique<Seq>();
  seq->submitted = Clock::now();
  seq->tokens = request->ids;
  const engine::ReusePlan& plan = request->plan;
  if ((request->reference != nullptr) != (plan.kind != engine::ReuseKind::kNone)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a reuse plan of kind ", engine::ReuseKindName(plan.kind),
                     request->reference != nullptr ? " with" : " without", " a reference"));
  }
  if (plan.kind != engine::ReuseKind::kNone &&
      (plan.n != n || plan.copy_rows < 0 || plan.copy_rows >= n)) {
    return absl::InvalidArgumentError(absl::StrCat("a reuse plan for ", plan.n, " tokens copying ",
                                                   plan.copy_rows, " rows, for a prompt of ", n,
                                                   " tokens (the last token is always computed)"));
  }
  seq->hit_pending = request->reference != nullptr && plan.rearranges();
  if (!request->prefill_only) {
    seq->stream = std::make_unique<engine::TokenStream>(*runner_->model().tokenizer,
                                                        request->options, &request->on_text);
  }
  seq->req = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return absl::UnavailableError("the server is shutting down; retry elsewhere");
    // Running and waiting together, so that the answer does not depend on whether the loop
    // has admitted the requests before this one yet.
    if (stats_.running + static_cast<int64_t>(waiting_.size()) >=
        int64_t{options_.max_num_seqs} + options_.max_waiting) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the server is at capacity (", stats_.running, " running, ", waiting_.size(),
                       " in the queue for ", options_.max_num_seqs, " sequences and ",
                       options_.max_waiting, " waiting); retry with backoff"));
    }
    waiting_.push_back(std::move(seq));
    idle_ = false;
    stats_.waiting = static_cast<int64_t>(waiting_.size());
    if (observer_ != nullptr) observer_->OnQueues(stats_.running, stats_.waiting);
  }
  work_cv_.notify_one();
  return absl::OkStatus();
}

void EngineLoop::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

bool EngineLoop::WaitIdle(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return idle_; });
}

LoopStats EngineLoop::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void EngineLoop::Run() {
  std::vector<std::unique_ptr<Seq>> running;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_ && waiting_.empty() && running.empty()) return;
    }
    Iterate(running);
  }
}

int64_t EngineLoop::HeldRows(const std::vector<std::unique_ptr<Seq>>& running) const {
  int64_t rows = 0;
  for (const auto& s : running) rows += s->reserved_rows();
  return rows;
}

void EngineLoop::Finish(std::unique_ptr<Seq> seq, absl::Status status) {
  const auto now = Clock::now();
  LoopResult& r = seq->result;
  if (status.ok() && seq->stream != nullptr) {
    r.gen = seq->stream->Finish();
    if (r.gen.finish == engine::FinishReason::kCancelled) {
      status = absl::CancelledError("the client stopped reading the stream");
    }
  }
  if (status.ok()) {
    r.gen.prompt_tokens = static_cast<int64_t>(seq->req->ids.size());
    r.total_ms = MsBetween(seq->submitted, now);
    if (!seq->was_admitted) r.queue_ms = r.total_ms;
    r.gen.timings.prefill_ms = r.prefill_ms;
    r.gen.timings.ttft_ms = r.ttft_ms;
    r.gen.timings.total_ms = r.total_ms;
    r.gen.timings.decode_ms = r.ttft_ms > 0 ? r.total_ms - r.ttft_ms : 0;
    if (seq->req->keep_kv && seq->kv != nullptr) {
      absl::StatusOr<engine::KvCache> kv = runner_->TakeKv(*seq->kv);
      if (kv.ok()) r.kv = *std::move(kv);
    }
  }
  seq->kv.reset();  // the rows are free from here on
  runner_full_ = false;
  Release(*seq);
  seq->req->reference = nullptr;
  auto done = std::move(seq->req->done);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.running;
  }
  if (!done) return;
  if (status.ok()) {
    done(std::move(seq->result));
  } else {
    done(status);
  }
}

void EngineLoop::Admit(std::vector<std::unique_ptr<Seq>>& running) {
  int64_t held = HeldRows(running);
  for (;;) {
    std::unique_ptr<Seq> seq;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiting_.empty() || static_cast<int32_t>(running.size()) >= options_.max_num_seqs) break;
      if (runner_full_ && !running.empty()) break;
      const int64_t need = static_cast<int64_t>(waiting_.front()->tokens.size()) + 1;
      if (!running.empty() && held + need > budget_rows_) break;
      seq = std::move(waiting_.front());
      waiting_.pop_front();
      // Counted as running from here on, until Finish or Preempt: a request is always either
      // waiting or running in the figures, never neither.
      ++stats_.running;
      stats_.waiting = static_cast<int64_t>(waiting_.size());
    }
    if (seq->cancelled()) {
      Finish(std::move(seq), absl::CancelledError("cancelled while waiting"));
      continue;
    }
    int64_t rows = static_cast<int64_t>(seq->tokens.size());
    if (seq->stream != nullptr) rows += seq->req->options.max_tokens - seq->stream->steps();
    absl::StatusOr<std::unique_ptr<SeqKv>> kv = runner_->NewSeq(rows);
    if (!kv.ok()) {
      if (absl::IsResourceExhausted(kv.status()) && !running.empty()) {
        runner_full_ = true;  // it waits until a running request frees memory
        Unadmit(std::move(seq));
        break;
      }
      Finish(std::move(seq), kv.status());
      continue;
    }
    seq->kv = *std::move(kv);
    seq->phase = Phase::kPrefill;
    seq->prefilled = 0;
    const engine::ReusePlan& plan = seq->req->plan;
    if (seq->req->reference != nullptr && plan.kind == engine::ReuseKind::kCopyPrefix) {
      // An exact prefix: its rows are copied now and the rest is prefilled in chunks. A
      // backend that cannot copy computes the whole prompt (same result, full cost); one out
      // of memory with others running waits for room, its plan kept.
      const absl::Status copied =
          runner_->CopyPrefix(*seq->kv, seq->req->reference->kv, plan.copy_rows);
      if (absl::IsResourceExhausted(copied) && !running.empty()) {
        runner_full_ = true;
        Unadmit(std::move(seq));
        break;
      }
      if (copied.ok()) {
        seq->prefilled = plan.copy_rows;
        seq->result.hit = true;
        seq->result.copied_rows = plan.copy_rows;
      }
      seq->req->reference = nullptr;  // unpinned
    }
    seq->pos.resize(seq->tokens.size());
    std::iota(seq->pos.begin(), seq->pos.end(), 0);
    if (!seq->was_admitted) {
      seq->was_admitted = true;
      seq->admitted = Clock::now();
      seq->result.queue_ms = MsBetween(seq->submitted, seq->admitted);
    }
    seq->order = ++next_order_;
    held += seq->reserved_rows();
    running.push_back(std::move(seq));
  }
}

void EngineLoop::Preempt(std::vector<std::unique_ptr<Seq>>& running, size_t index) {
  std::unique_ptr<Seq> seq = std::move(running[index]);
  running.erase(running.begin() + static_cast<std::ptrdiff_t>(index));
  seq->kv.reset();
  Release(*seq);
  // Recompute later: the prompt and every token sampled so far (the pending one included, so
  // the prefill's logits are those of the token after it).
  seq->tokens = seq->req->ids;
  if (seq->stream != nullptr) {
    const std::vector<int32_t>& gen = seq->stream->tokens();
    seq->tokens.insert(seq->tokens.end(), gen.begin(), gen.end());
  }
  seq->hit_pending = false;  // the recompute is a plain prefill
  seq->req->reference = nullptr;
  seq->phase = Phase::kWaiting;
  seq->prefilled = 0;
  ++seq->result.preemptions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_.push_front(std::move(seq));
    --stats_.running;
    stats_.waiting = static_cast<int64_t>(waiting_.size());
    ++stats_.preemptions;
  }
  if (observer_ != nullptr) observer_->OnPreemption();
}

void EngineLoop::Unadmit(std::unique_ptr<Seq> seq) {
  seq->kv.reset();
  seq->phase = Phase::kWaiting;
  seq->prefilled = 0;
  std::lock_guard<std::mutex> lock(mu_);
  waiting_.push_front(std::move(seq));
  --stats_.running;
  stats_.waiting = static_cast<int64_t>(waiting_.size());
}

void EngineLoop::Iterate(std::vector<std::unique_ptr<Seq>>& running) {
  const int64_t vocab = runner_->model().config.vocab_size;
  auto remove = [&running](size_t i) {
    std::unique_ptr<Seq> s = std::move(running[i]);
    running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
    return s;
  };

  // 1. Cancellation and deadlines free their rows first; cancelled requests that still wait
  // leave the queue now too (their clients are told at once, not when admission reaches them).
  for (size_t i = running.size(); i-- > 0;) {
    if (running[i]->cancelled()) Finish(remove(i), absl::CancelledError("cancelled"));
  }
  std::vector<std::unique_ptr<Seq>> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->cancelled()) {
        gone.push_back(std::move(*it));
        it = waiting_.erase(it);
        ++stats_.running;  // Finish counts it down
      } else {
        ++it;
      }
    }
    stats_.waiting = static_cast<int64_t>(waiting_.size());
  }
  for (auto& g : gone) Finish(std::move(g), absl::CancelledError("cancelled while waiting"));
  // 2. Admission.
  Admit(running);

  // 3. At most one reuse hit's prefill (its plan is the request's whole prefill).
  for (size_t i = 0; i < running.size(); ++i) {
    Seq& s = *running[i];
    if (s.phase != Phase::kPrefill || !s.hit_pending) continue;
    s.hit_pending = false;
    s.logits.resize(vocab);
    const store::Record& ref = *s.req->reference;
    absl::StatusOr<engine::PrefillStats> st =
        runner_->PrefillHit(*s.kv, s.tokens, ref.ids, ref.kv, s.req->plan, s.logits.data(),
                            [&s] { return s.cancelled(); });
    if (absl::IsResourceExhausted(st.status()) && running.size() > 1) {
      // The runner's memory ran out (adopting the rows into the CUDA page pool): the request
      // waits at the queue's front with its plan until a running one frees memory.
      s.hit_pending = true;
      runner_full_ = true;
      Unadmit(remove(i));
      break;
    }
    s.req->reference = nullptr;  // unpinned
    if (!st.ok()) {
      Finish(remove(i), st.status());
      break;
    }
    s.result.hit = true;
    s.result.prefill = *std::move(st);
    s.prefilled = static_cast<int64_t>(s.tokens.size());
    if (AfterLogits(s)) Finish(remove(i), absl::OkStatus());
    break;
  }

  // 4. The decode rows must fit the budget: preempt the newest request until they do.
  for (;;) {
    int64_t decoding = 0;
    for (const auto& s : running) decoding += s->phase == Phase::kDecode ? 1 : 0;
    if (running.size() <= 1 || HeldRows(running) + decoding <= budget_rows_) break;
    size_t newest = 0;
    for (size_t i = 1; i < running.size(); ++i) {
      if (running[i]->order > running[newest]->order) newest = i;
    }
    Preempt(running, newest);
  }

  // 5. One batch: a row for every decoding request, then prefill chunks up to the token budget.
  items_.clear();
  item_seqs_.clear();
  int64_t rows = 0;
  for (const auto& sp : running) {
    Seq& s = *sp;
    if (s.phase != Phase::kDecode) continue;
    s.pending_pos = s.next_pos;
    items_.push_back(
        BatchRunner::Item{s.kv.get(), {&s.pending, 1}, {&s.pending_pos, 1}, s.logits.data()});
    item_seqs_.push_back(&s);
    ++rows;
  }
  int64_t budget = std::max<int64_t>(options_.max_batch_tokens - rows, 0);
  const int64_t max_chunk = runner_->max_chunk();
  for (const auto& sp : running) {
    Seq& s = *sp;
    if (s.phase != Phase::kPrefill || s.hit_pending) continue;
    const int64_t left = static_cast<int64_t>(s.tokens.size()) - s.prefilled;
    int64_t chunk = left;
    if (max_chunk > 0) {
      chunk = std::min({left, budget, max_chunk});
    } else if (rows > 0 && left > budget) {
      continue;  // whole prompts only: this one waits for a batch with room
    }
    if (chunk <= 0) break;
    const bool last = s.prefilled + chunk == static_cast<int64_t>(s.tokens.size());
    s.logits.resize(vocab);
    items_.push_back(BatchRunner::Item{
        s.kv.get(), std::span<const int32_t>(s.tokens).subspan(s.prefilled, chunk),
        std::span<const int32_t>(s.pos).subspan(s.prefilled, chunk),
        last && !s.req->prefill_only ? s.logits.data() : nullptr});
    item_seqs_.push_back(&s);
    s.chunk = chunk;
    rows += chunk;
    budget -= chunk;
  }
  if (items_.empty()) {
    Publish(running, 0);
    return;
  }

  // 6. Run it, then sample every request whose logits came out.
  const absl::Status st = runner_->Forward(items_);
  if (absl::IsResourceExhausted(st) && running.size() > 1) {
    // The runner's memory ran out before the loop's row budget did (the CUDA page pool); it
    // changed nothing (BatchRunner::Forward). As in 4: preempt the newest, retry next
    // iteration without it, and admit nothing new until a request finishes.
    size_t newest = 0;
    for (size_t i = 1; i < running.size(); ++i) {
      if (running[i]->order > running[newest]->order) newest = i;
    }
    Preempt(running, newest);
    runner_full_ = true;
    Publish(running, 0);
    return;
  }
  if (absl::IsResourceExhausted(st)) {
    // Alone: it cannot fit, now or later.
    const Seq& s = *running.front();
    const absl::Status alone = absl::ResourceExhaustedError(
        absl::StrCat("the request alone (a prompt of ", s.req->ids.size(),
                     " tokens) needs more KV memory than the ", std::string(runner_->backend()),
                     " backend holds: shorten the prompt or max_tokens (", st.message(), ")"));
    Finish(remove(0), alone);
    Publish(running, rows);
    return;
  }
  if (!st.ok()) {
    // The KV of every request in the batch is in an unknown state.
    for (size_t i = running.size(); i-- > 0;) {
      if (std::find(item_seqs_.begin(), item_seqs_.end(), running[i].get()) != item_seqs_.end()) {
        Finish(remove(i), st);
      }
    }
    Publish(running, rows);
    return;
  }
  std::vector<Seq*> finished;
  for (Seq* s : item_seqs_) {
    if (s->phase == Phase::kDecode) {
      ++s->next_pos;
    } else {
      s->prefilled += s->chunk;
      if (s->prefilled < static_cast<int64_t>(s->tokens.size())) continue;
    }
    if (AfterLogits(*s)) finished.push_back(s);
  }
  for (size_t i = running.size(); i-- > 0;) {
    if (std::find(finished.begin(), finished.end(), running[i].get()) != finished.end()) {
      Finish(remove(i), absl::OkStatus());
    }
  }
  Publish(running, rows);
}

bool EngineLoop::AfterLogits(Seq& s) {
  const auto now = Clock::now();
  if (s.phase == Phase::kPrefill) {
    // The prompt (or, after a preemption, prompt + generated tokens) is in the KV.
    s.next_pos = static_cast<int32_t>(s.tokens.size());
    if (!s.prefilled_once) {
      s.prefilled_once = true;
      s.result.prefill_ms = MsBetween(s.admitted, now);
      s.result.kv_bytes = s.kv->bytes();
    }
    if (s.req->prefill_only) return true;
    s.phase = Phase::kDecode;
  }
  const bool more = s.stream->Accept(s.logits);
  if (s.stream->steps() == 1 && s.result.ttft_ms == 0) {
    s.result.ttft_ms = MsBetween(s.submitted, now);
  } else if (observer_ != nullptr) {
    observer_->OnInterToken(std::chrono::duration<double>(now - s.last_token).count());
  }
  s.last_token = now;
  if (!more) return true;
  s.pending = s.stream->last_token();
  return false;
}

void EngineLoop::Release(Seq& seq) {
  if (observer_ != nullptr && seq.published_bytes > 0) observer_->OnRelease(seq.published_bytes);
  seq.published_bytes = 0;
}

void EngineLoop::Publish(const std::vector<std::unique_ptr<Seq>>& running, int64_t rows) {
  int64_t bytes = 0;
  for (const auto& s : running) {
    s->published_bytes = s->kv != nullptr ? s->kv->bytes() : 0;
    bytes += s->published_bytes;
  }
  const double util =
      std::min(1.0, static_cast<double>(HeldRows(running)) / static_cast<double>(budget_rows_));
  int64_t r, w;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.waiting = static_cast<int64_t>(waiting_.size());
    stats_.kv_bytes = bytes;
    if (rows > 0) ++stats_.iterations;
    r = stats_.running;
    w = stats_.waiting;
    // Idle only here, after an iteration's results and figures are all out (a request leaves
    // `waiting_` before it is in `running`, and finishes before these figures are updated).
    if (waiting_.empty() && running.empty()) {
      idle_ = true;
      idle_cv_.notify_all();
    }
  }
  if (observer_ != nullptr) {
    observer_->OnQueues(r, w);
    observer_->OnIteration(rows, bytes, util);
  }
}

}  // namespace semshare::serving
