#include "engine/text/bpe_pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace semshare::engine {
namespace {

// Unicode White_Space (PropList.txt), spelled for a PCRE2 character class.
constexpr char kWhiteSpace[] =
    R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F})"
    R"(\x{205F}\x{3000})";

constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|)"
    R"( ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kDigit = R"(\p{N})";

// Rewrites \s and \S (inside or outside a class) as the White_Space set. The patterns above
// have no nested classes and no escaped brackets, which keeps this scan simple.
std::string ExpandWhiteSpace(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", kWhiteSpace, in_class ? "" : "]");
      } else if (e == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kWhiteSpace, "]");
      } else {
        out.push_back(c);
        out.push_back(e);
      }
      continue;
    }
    if (c == '[') in_class = true;
    if (c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

struct PreTokenizer::Stage {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Stage() { pcre2_code_free(code); }
};

PreTokenizer::~PreTokenizer() = default;

std::string PreTokenizer::CanonicalRule(std::string_view name) {
  if (name == "gpt2") return "gpt2";
  if (name == "llama3" || name == "llama-bpe") return "llama3";
  if (name == "qwen2") return "qwen2";
  if (name == "smollm") return "smollm";
  return "";
}

std::string_view PreTokenizer::HfPattern(std::string_view canonical_rule) {
  if (canonical_rule == "gpt2" || canonical_rule == "smollm") return kGpt2;
  if (canonical_rule == "llama3") return kLlama3;
  if (canonical_rule == "qwen2") return kQwen2;
  return "";
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(std::string_view rule) {
  const std::string canonical = CanonicalRule(rule);
  std::vector<std::string_view> patterns;
  if (canonical == "gpt2") {
    patterns = {kGpt2};
  } else if (canonical == "llama3") {
    patterns = {kLlama3};
  } else if (canonical == "qwen2") {
    patterns = {kQwen2};
  } else if (canonical == "smollm") {
    patterns = {kDigit, kGpt2};
  } else {
    return absl::UnimplementedError(
        absl::StrCat("pre-tokenizer rule '", std::string(rule),
                     "' is not supported (supported: gpt2, llama-bpe/llama3, qwen2, smollm)"));
  }
  auto pre = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  pre->rule_ = canonical;
  for (std::string_view pattern : patterns) {
    const std::string expanded = ExpandWhiteSpace(pattern);
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    auto stage = std::make_unique<Stage>();
    stage->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(expanded.data()), expanded.size(),
                                PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error,
                                &error_offset, nullptr);
    if (stage->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InternalError(
          absl::StrCat("pre-tokenizer '", canonical, "': PCRE2 rejects its pattern at offset ",
                       error_offset, ": ", reinterpret_cast<const char*>(message)));
    }
    // JIT is only a speed-up; without it (unsupported CPU, build without JIT) we interpret.
    stage->jit = pcre2_jit_compile(stage->code, PCRE2_JIT_COMPLETE) == 0;
    pre->stages_.push_back(std::move(stage));
  }
  return pre;
}

namespace {

// Matches of `code` in `text`, with the unmatched stretches between them, appended to `out`.
void SplitOne(const pcre2_code* code, bool jit, pcre2_match_data* match, std::string_view text,
              std::vector<std::string_view>* out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t gap_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    uint32_t options = jit ? 0 : PCRE2_NO_JIT;
    int rc = pcre2_match(code, subject, text.size(), pos, options, match, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The JIT's machine stack is small (32 KiB); the interpreter uses the heap instead.
      rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_JIT, match, nullptr);
    }
    if (rc < 0) break;  // no further match (or a resource limit): the rest is one gap
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (end <= start) {
      // None of our patterns can match empty; step over one byte defensively.
      pos = start + 1;
      continue;
    }
    if (start > gap_start) out->push_back(text.substr(gap_start, start - gap_start));
    out->push_back(text.substr(start, end - start));
    gap_start = pos = end;
  }
  if (gap_start < text.size()) out->push_back(text.substr(gap_start));
}

}  // namespace

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (text.empty()) return;
  std::vector<std::string_view> current = {text};
  std::vector<std::string_view> next;
  for (const auto& stage : stages_) {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(stage->code, nullptr);
    if (match == nullptr) break;  // out of memory: keep the coarser pieces (still exact)
    next.clear();
    for (std::string_view piece : current) SplitOne(stage->code, stage->jit, match, piece, &next);
    pcre2_match_data_free(match);
    std::swap(current, next);
  }
  pieces->insert(pieces->end(), current.begin(), current.end());
}

}  // namespace semshare::engine
