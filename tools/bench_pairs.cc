#include "tools/bench_pairs.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace semshare::tools {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

// Debian's abseil is built without ABSL_USES_STD_STRING_VIEW, so absl::string_view is its own
// type; the public API takes std::string_view and converts here.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Joins views (absl::StrJoin's default formatter wants absl::string_view).
template <typename It>
std::string Join(It begin, It end, std::string_view sep) {
  std::string out;
  for (It it = begin; it != end; ++it) {
    if (it != begin) out.append(sep);
    out.append(it->data(), it->size());
  }
  return out;
}

// Lines of `text` without their "\n" or "\r\n" endings.
std::vector<absl::string_view> Lines(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  for (auto& l : lines) {
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
  }
  return lines;
}

// The largest k in [1, available] with exact(k) <= target, where exact(k) counts the prompt
// made of the first k sentences (exact(0): the prompt without any, `overhead`). Per-sentence
// counts give a cheap first guess (text is encoded once per sentence instead of once per
// prefix); exact counts then correct it, since joining can merge or split tokens at the seams.
absl::StatusOr<int64_t> FitCount(int64_t available, int64_t target, int64_t overhead,
                                 const std::function<int64_t(int64_t)>& sentence_tokens,
                                 const std::function<absl::StatusOr<int64_t>(int64_t)>& exact) {
  if (overhead >= target) {
    return absl::InvalidArgumentError(absl::StrCat("target length ", target,
                                                   " tokens leaves no room for text: the "
                                                   "instruction and question alone take ",
                                                   overhead));
  }
  if (available == 0) return absl::InvalidArgumentError("the corpus ran out of sentences");
  int64_t k = 0, estimate = overhead;
  while (k < available && estimate + sentence_tokens(k) <= target) estimate += sentence_tokens(k++);
  k = std::clamp<int64_t>(k, 1, available);
  // Invariant: exact(lo) <= target (lo = 0: nothing fits), exact(hi) > target (hi = available
  // + 1: everything fits). Gallop from the guess, then bisect.
  absl::Status error;
  auto fits = [&](int64_t kk) {
    absl::StatusOr<int64_t> n = exact(kk);
    if (!n.ok()) {
      if (error.ok()) error = n.status();
      return false;
    }
    return *n <= target;
  };
  int64_t lo = 0, hi = available + 1;
  if (fits(k)) {
    lo = k;
    for (int64_t step = 1; lo + step <= available; step *= 2) {
      if (!fits(lo + step)) {
        hi = lo + step;
        break;
      }
      lo += step;
    }
  } else {
    hi = k;
    for (int64_t step = 1; hi - step >= 1; step *= 2) {
      if (fits(hi - step)) {
        lo = hi - step;
        break;
      }
      hi -= step;
    }
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  if (!error.ok()) return error;
  if (lo == available) {
    return absl::InvalidArgumentError(
        absl::StrCat("the corpus ran out before reaching ", target, " tokens"));
  }
  if (lo == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("one sentence already exceeds the target length ", target));
  }
  return lo;
}

PromptPair TextPair(PairKind kind, int64_t length, int64_t index, std::string reference,
                    std::string target, int64_t sentences, int64_t passages) {
  PromptPair p;
  p.kind = kind;
  p.length = length;
  p.index = index;
  p.reference = std::move(reference);
  p.target = std::move(target);
  p.sentences = sentences;
  p.passages = passages;
  return p;
}

// FitCount for a wrapped body of the first k sentences.
absl::StatusOr<int64_t> FitSentences(const std::vector<std::string_view>& sentences,
                                     const std::function<std::string(int64_t)>& body,
                                     const PairOptions& options, const TokenCounter& count) {
  return FitCount(
      static_cast<int64_t>(sentences.size()), options.target_tokens, count(WrapPrompt("", options)),
      [&](int64_t k) { return count(sentences[k]); },
      [&](int64_t k) -> absl::StatusOr<int64_t> { return count(WrapPrompt(body(k), options)); });
}

}  // namespace

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

absl::StatusOr<std::vector<MrpcPair>> ParseMrpc(std::string_view text_in,
                                                std::string_view source_in) {
  absl::string_view text = Absl(text_in), source = Absl(source_in);
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) text.remove_prefix(3);  // utf-8-sig
  std::vector<MrpcPair> out;
  const std::vector<absl::string_view> lines = Lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    const absl::string_view line = lines[i];
    if (line.empty()) continue;
    if (i == 0 && line.substr(0, 7) == "Quality") continue;  // header
    std::vector<absl::string_view> f = absl::StrSplit(line, '\t');
    if (f.size() != 5 || (f[0] != "0" && f[0] != "1") || f[3].empty() || f[4].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " line ", i + 1,
                       ": expected 'label<TAB>id1<TAB>id2<TAB>sentence1<TAB>sentence2' with "
                       "label 0 or 1 and non-empty sentences"));
    }
    out.push_back({f[0] == "1" ? 1 : 0, std::string(f[3]), std::string(f[4])});
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no sentence pairs"));
  return out;
}

absl::StatusOr<std::vector<MrpcPair>> LoadMrpc(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseMrpc(*text, path);
}

std::string CorpusPath(const std::string& flag) {
  namespace fs = std::filesystem;
  const fs::path shipped = fs::path("paraphrase") / "paraphrase_pairs.txt";
  std::error_code ec;
  if (!flag.empty()) {
    if (!fs::is_directory(flag, ec)) return flag;
    const fs::path mrpc = fs::path(flag) / "paraphrase" / "msr_paraphrase_train.txt";
    if (!fs::exists(fs::path(flag) / shipped, ec) && fs::exists(mrpc, ec)) return mrpc.string();
    return (fs::path(flag) / shipped).string();
  }
  std::vector<fs::path> roots;
  if (const char* env = std::getenv("SEMSHARE_SOURCE_DIR"); env != nullptr && *env != '\0') {
    roots.emplace_back(env);
  }
  roots.push_back(fs::current_path(ec));
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) roots.push_back(exe.parent_path().parent_path().parent_path());
  for (const fs::path& r : roots) {
    if (fs::exists(r / "data" / shipped, ec)) return (r / "data" / shipped).string();
  }
  return (roots.front() / "data" / shipped).string();
}

const char* PairKindName(PairKind kind) {
  switch (kind) {
    case PairKind::kParaphrase:
      return "paraphrase";
    case PairKind::kReorder:
      return "reorder";
    case PairKind::kRepeat:
      return "repeat";
    case PairKind::kUser:
      return "user";
    case PairKind::kChat:
      return "chat";
  }
  return "?";
}

std::string WrapPrompt(std::string_view body, const PairOptions& options) {
  return absl::StrCat(options.instruction, Absl(body), options.question);
}

absl::StatusOr<std::vector<PromptPair>> BuildParaphrasePairs(const std::vector<MrpcPair>& corpus,
                                                             const PairOptions& options,
                                                             const TokenCounter& count_tokens) {
  std::vector<const MrpcPair*> positives;
  for (const MrpcPair& p : corpus) {
    if (p.label == 1) positives.push_back(&p);
  }
  const std::vector<int64_t> order =
      SeededPermutation(static_cast<int64_t>(positives.size()), options.seed);
  std::vector<PromptPair> out;
  size_t cursor = 0;
  for (int64_t pair = 0; pair < options.pairs; ++pair) {
    std::vector<std::string_view> first, second;
    for (size_t i = cursor; i < order.size(); ++i) {
      first.push_back(positives[order[i]]->sentence1);
      second.push_back(positives[order[i]]->sentence2);
    }
    auto body = [&](const std::vector<std::string_view>& s, int64_t k) {
      return Join(s.begin(), s.begin() + k, "\n");
    };
    auto k = FitSentences(
        second, [&](int64_t kk) { return body(second, kk); }, options, count_tokens);
    if (!k.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("paraphrase pair ", pair, " of ",
                                                     options.pairs, ": ", k.status().message()));
    }
    out.push_back(TextPair(PairKind::kParaphrase, options.target_tokens, pair,
                           WrapPrompt(body(first, *k), options),
                           WrapPrompt(body(second, *k), options), *k, 0));
    cursor += *k;
  }
  return out;
}

absl::StatusOr<std::vector<PromptPair>> BuildReorderPairs(const std::vector<MrpcPair>& corpus,
                                                          const PairOptions& options,
                                                          const TokenCounter& count_tokens) {
  if (options.passage_sentences < 1) {
    return absl::InvalidArgumentError("passage_sentences must be >= 1");
  }
  // A different walk of the corpus than the paraphrase kind's, over every first sentence.
  const std::vector<int64_t> order =
      SeededPermutation(static_cast<int64_t>(corpus.size()), options.seed ^ 0x9e3779b97f4a7c15ull);
  const int64_t per = options.passage_sentences;
  std::vector<PromptPair> out;
  size_t cursor = 0;
  for (int64_t pair = 0; pair < options.pairs; ++pair) {
    std::vector<std::string_view> sentences;
    for (size_t i = cursor; i < order.size(); ++i) sentences.push_back(corpus[order[i]].sentence1);
    const uint64_t shuffle_seed = options.seed * 1000003ull + static_cast<uint64_t>(pair);
    // Passages of `per` sentences (the last may be shorter), joined by blank lines, in the
    // given passage order.
    auto body = [&](int64_t k, bool shuffled) {
      std::vector<std::string> passages;
      for (int64_t s = 0; s < k; s += per) {
        passages.push_back(
            Join(sentences.begin() + s, sentences.begin() + std::min(k, s + per), "\n"));
      }
      if (!shuffled) return absl::StrJoin(passages, "\n\n");
      const int64_t n = static_cast<int64_t>(passages.size());
      std::vector<int64_t> perm = SeededPermutation(n, shuffle_seed);
      bool identity = true;
      for (int64_t i = 0; i < n; ++i) identity = identity && perm[i] == i;
      if (identity && n > 1) std::rotate(perm.begin(), perm.begin() + 1, perm.end());
      std::vector<std::string> moved;
      for (int64_t i : perm) moved.push_back(passages[i]);
      return absl::StrJoin(moved, "\n\n");
    };
    auto k = FitSentences(
        sentences, [&](int64_t kk) { return body(kk, true); }, options, count_tokens);
    if (!k.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("reorder pair ", pair, " of ", options.pairs, ": ", k.status().message()));
    }
    out.push_back(TextPair(PairKind::kReorder, options.target_tokens, pair,
                           WrapPrompt(body(*k, false), options),
                           WrapPrompt(body(*k, true), options), *k, (*k + per - 1) / per));
    cursor += *k;
  }
  return out;
}

absl::StatusOr<std::vector<PromptPair>> BuildRepeatPairs(const std::vector<MrpcPair>& corpus,
                                                         const PairOptions& options,
                                                         const TokenCounter& count_tokens) {
  auto pairs = BuildParaphrasePairs(corpus, options, count_tokens);
  if (!pairs.ok()) return pairs.status();
  for (PromptPair& p : *pairs) {
    p.kind = PairKind::kRepeat;
    p.target = p.reference;
  }
  return pairs;
}

std::vector<engine::ChatMessage> ChatTargetMessages(const PromptPair& pair,
                                                    std::string_view answer) {
  std::vector<engine::ChatMessage> m = pair.reference_messages;
  m.push_back({"assistant", std::string(answer)});
  m.push_back({"user", pair.next_user});
  return m;
}

absl::StatusOr<std::vector<PromptPair>> BuildChatPairs(const std::vector<MrpcPair>& corpus,
                                                       const PairOptions& options,
                                                       const ChatCounter& count_tokens) {
  const int64_t turns = options.chat_turns;
  if (turns < 2) return absl::InvalidArgumentError("chat_turns must be >= 2");
  if (options.chat_questions.empty()) return absl::InvalidArgumentError("no chat questions");
  std::vector<const MrpcPair*> positives;
  for (const MrpcPair& p : corpus) {
    if (p.label == 1) positives.push_back(&p);
  }
  // Another walk than the paraphrase kind's. Answers come from the end of the walk, bodies
  // from its start, so no sentence is used twice within a call.
  const std::vector<int64_t> order = SeededPermutation(static_cast<int64_t>(positives.size()),
                                                       options.seed ^ 0x51ed270b27a6e1c3ull);
  const int64_t answers_needed = options.pairs * (turns - 1);
  if (answers_needed >= static_cast<int64_t>(order.size())) {
    return absl::InvalidArgumentError("the corpus ran out of answers for the chat pairs");
  }
  const size_t body_end = order.size() - static_cast<size_t>(answers_needed);
  auto question = [&](int64_t turn) {
    return options.chat_questions[turn % options.chat_questions.size()];
  };
  std::vector<PromptPair> out;
  size_t cursor = 0;
  for (int64_t pair = 0; pair < options.pairs; ++pair) {
    std::vector<std::string_view> sentences;
    for (size_t i = cursor; i < body_end; ++i) sentences.push_back(positives[order[i]]->sentence1);
    std::vector<std::string> answers;
    const int64_t last = static_cast<int64_t>(order.size()) - 1;
    for (int64_t t = 0; t + 1 < turns; ++t) {
      answers.push_back(positives[order[last - (pair * (turns - 1) + t)]]->sentence2);
    }
    // Turn T-1's conversation with k body sentences: user turns 1..T-1 share them in order.
    auto reference = [&](int64_t k) {
      std::vector<engine::ChatMessage> m = {{"system", options.chat_system}};
      for (int64_t t = 0; t + 1 < turns; ++t) {
        const int64_t a = k * t / (turns - 1), b = k * (t + 1) / (turns - 1);
        std::string user =
            t == 0 ? "Here is a news report.\n\n" : "Here is more of the report.\n\n";
        user += Join(sentences.begin() + a, sentences.begin() + b, "\n");
        user += "\n\n" + question(t);
        if (t > 0) m.push_back({"assistant", answers[t - 1]});
        m.push_back({"user", std::move(user)});
      }
      return m;
    };
    auto make = [&](int64_t k) {
      PromptPair p;
      p.kind = PairKind::kChat;
      p.length = options.target_tokens;
      p.index = pair;
      p.sentences = k;
      p.turns = turns;
      p.reference_messages = reference(k);
      p.answer = answers.back();
      p.next_user = question(turns - 1);
      return p;
    };
    auto exact = [&](int64_t k) -> absl::StatusOr<int64_t> {
      const PromptPair p = make(k);
      return count_tokens(ChatTargetMessages(p, p.answer));
    };
    absl::StatusOr<int64_t> overhead = exact(0);
    if (!overhead.ok()) return overhead.status();
    // The first guess counts each sentence as a user message, less an empty one's tokens.
    const engine::ChatMessage empty_user{"user", ""};
    absl::StatusOr<int64_t> empty = count_tokens({&empty_user, 1});
    if (!empty.ok()) return empty.status();
    auto k = FitCount(
        static_cast<int64_t>(sentences.size()), options.target_tokens, *overhead,
        [&](int64_t i) {
          const engine::ChatMessage m{"user", std::string(sentences[i])};
          absl::StatusOr<int64_t> n = count_tokens({&m, 1});
          return n.ok() ? std::max<int64_t>(*n - *empty, 1) : int64_t{1};
        },
        exact);
    if (!k.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat pair ", pair, " of ", options.pairs, ": ", k.status().message()));
    }
    out.push_back(make(*k));
    cursor += *k;
  }
  return out;
}

absl::StatusOr<std::vector<PromptPair>> ParseUserPairs(std::string_view text,
                                                       std::string_view source_in) {
  const absl::string_view source = Absl(source_in);
  std::vector<PromptPair> out;
  const std::vector<absl::string_view> lines = Lines(Absl(text));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string_view::npos) continue;
    auto where = [&] { return absl::StrCat(source, " line ", i + 1, ": "); };
    const nlohmann::json j = nlohmann::json::parse(
        std::string_view(lines[i].data(), lines[i].size()), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "not a JSON object"));
    }
    auto field = [&](const char* key) -> absl::StatusOr<std::string> {
      auto it = j.find(key);
      if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where(), "needs a non-empty string \"", key, "\""));
      }
      return it->get<std::string>();
    };
    auto reference = field("reference");
    if (!reference.ok()) return reference.status();
    auto target = field("target");
    if (!target.ok()) return target.status();
    PromptPair p;
    p.kind = PairKind::kUser;
    p.index = static_cast<int64_t>(out.size());
    p.reference = *std::move(reference);
    p.target = *std::move(target);
    out.push_back(std::move(p));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no pairs"));
  return out;
}

absl::StatusOr<std::vector<PromptPair>> LoadUserPairs(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseUserPairs(*text, path);
}

}  // namespace semshare::tools
