#include "engine/text/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/unicode_utf8.h"

namespace semshare::engine {
namespace {

// Names of end-of-generation tokens across the model families we serve.
constexpr std::array<std::string_view, 5> kEogNames = {"<|im_end|>", "<|eot_id|>",
                                                       "<|end_of_text|>", "<|endoftext|>", "</s>"};

constexpr int32_t kDeadSymbol = -2;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// "<0xAB>" -> 0xAB, or -1.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || !text.starts_with("<0x") || text.back() != '>') return -1;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return -1;
    const int digit = absl::ascii_isdigit(static_cast<unsigned char>(c))
                          ? c - '0'
                          : absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
    value = value * 16 + digit;
  }
  return value;
}

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeVocab vocab) : v_(std::move(vocab)) {}

  absl::Status Init();

  std::vector<int32_t> Encode(std::string_view text, bool parse_special) const override;
  std::string Decode(std::span<const int32_t> ids) const override;
  std::string TokenBytes(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? token_bytes_[id] : std::string();
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(v_.tokens.size()); }
  int32_t bos_id() const override { return v_.bos_id; }
  int32_t eos_id() const override { return v_.eos_id; }
  const std::vector<int32_t>& eog_ids() const override { return eog_ids_; }
  bool add_bos() const override { return v_.add_bos; }
  int32_t TokenId(std::string_view token_text) const override {
    const auto it = token_ids_.find(token_text);
    return it == token_ids_.end() ? -1 : it->second;
  }
  const std::string& chat_template() const override { return v_.chat_template; }
  const std::string& pre_tokenizer() const override { return pre_->rule(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct Special {
    std::string_view text;  // into v_.tokens
    int32_t id;
    bool needs_parse_special;  // control/unknown; user-defined tokens are always split out
  };

  // Position and index (into specials_) of the leftmost, then longest, special token in
  // text[from..]; {npos, -1} if none.
  std::pair<size_t, int> FindSpecial(std::string_view text, size_t from, bool parse_special) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;

  BpeVocab v_;
  std::unique_ptr<PreTokenizer> pre_;
  std::vector<std::string> token_bytes_;                      // [n_vocab] decoded bytes
  absl::flat_hash_map<std::string_view, int32_t> token_ids_;  // text -> first id with it
  absl::flat_hash_map<uint64_t, Merge> merges_;               // (left id, right id) -> merge
  std::array<int32_t, 256> byte_ids_{};                       // token of each single byte
  std::vector<Special> specials_;
  std::array<std::vector<int>, 256> specials_by_first_byte_;  // longest first
  std::vector<int32_t> eog_ids_;
};

absl::Status BpeTokenizer::Init() {
  const size_t n = v_.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer: the vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer: the vocabulary is too large");
  }
  if (v_.types.empty()) v_.types.assign(n, TokenType::kNormal);
  if (v_.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer: ", v_.types.size(), " token types for ", n, " tokens"));
  }
  for (auto [name, id] : {std::pair{"bos", v_.bos_id}, std::pair{"eos", v_.eos_id},
                          std::pair{"unknown", v_.unk_id}, std::pair{"padding", v_.pad_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: ", name, " token id ", id, " is outside [0, ", n, ")"));
    }
  }
  for (int32_t id : v_.extra_eog_ids) {
    if (id < 0 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: end-of-generation id ", id, " is outside [0, ", n, ")"));
    }
  }
  auto pre = PreTokenizer::Create(v_.pre);
  if (!pre.ok()) return pre.status();
  pre_ = *std::move(pre);

  const auto& alphabet = utf8::ByteLevelAlphabet::Get();
  token_bytes_.resize(n);
  token_ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = v_.tokens[i];
    const auto id = static_cast<int32_t>(i);
    token_ids_.try_emplace(text, id);
    switch (v_.types[i]) {
      case TokenType::kNormal:
        token_bytes_[i] = alphabet.Decode(text);
        break;
      case TokenType::kByte: {
        const int b = ParseByteToken(text);
        token_bytes_[i] = b >= 0 ? std::string(1, static_cast<char>(b)) : text;
        break;
      }
      case TokenType::kControl:
      case TokenType::kUnknown:
      case TokenType::kUserDefined:
        token_bytes_[i] = text;
        if (!text.empty()) {
          specials_.push_back({text, id, v_.types[i] != TokenType::kUserDefined});
        }
        break;
      default:
        token_bytes_[i] = text;
        break;
    }
  }
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = -1;
    const auto it = token_ids_.find(alphabet.CharOf(static_cast<uint8_t>(b)));
    if (it != token_ids_.end() && v_.types[it->second] == TokenType::kNormal) {
      byte_ids_[b] = it->second;
      continue;
    }
    // Byte fallback, for vocabularies that carry "<0xAB>" tokens.
    const auto byte_token = token_ids_.find(absl::StrFormat("<0x%02X>", b));
    if (byte_token != token_ids_.end()) byte_ids_[b] = byte_token->second;
  }
  merges_.reserve(v_.merges.size());
  for (size_t rank = 0; rank < v_.merges.size(); ++rank) {
    const auto& [left, right] = v_.merges[rank];
    const auto l = token_ids_.find(left);
    const auto r = token_ids_.find(right);
    const auto result = token_ids_.find(absl::StrCat(left, right));
    if (l == token_ids_.end() || r == token_ids_.end() || result == token_ids_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: merge ", rank, " ('", left, "' + '", right,
                       "') uses or makes a token that is not in the vocabulary"));
    }
    // A repeated pair keeps its first (best) rank, as llama.cpp does.
    merges_.try_emplace(PairKey(l->second, r->second),
                        Merge{static_cast<int32_t>(rank), result->second});
  }
  for (int i = 0; i < static_cast<int>(specials_.size()); ++i) {
    specials_by_first_byte_[static_cast<uint8_t>(specials_[i].text[0])].push_back(i);
  }
  for (auto& list : specials_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](int a, int b) {
      return specials_[a].text.size() > specials_[b].text.size();
    });
  }
  if (v_.eos_id >= 0) eog_ids_.push_back(v_.eos_id);
  for (int32_t id : v_.extra_eog_ids) eog_ids_.push_back(id);
  for (std::string_view name : kEogNames) {
    if (const int32_t id = TokenId(name); id >= 0) eog_ids_.push_back(id);
  }
  std::sort(eog_ids_.begin(), eog_ids_.end());
  eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());
  return absl::OkStatus();
}

std::pair<size_t, int> BpeTokenizer::FindSpecial(std::string_view text, size_t from,
                                                 bool parse_special) const {
  if (specials_.empty()) return {std::string_view::npos, -1};
  for (size_t pos = from; pos < text.size(); ++pos) {
    for (int index : specials_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      const Special& special = specials_[index];
      if (special.needs_parse_special && !parse_special) continue;
      if (text.substr(pos).starts_with(special.text)) return {pos, index};
    }
  }
  return {std::string_view::npos, -1};
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<std::string_view> words;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto [special_pos, index] = FindSpecial(text, pos, parse_special);
    const size_t end = index < 0 ? text.size() : special_pos;
    words.clear();
    pre_->Split(text.substr(pos, end - pos), &words);
    for (std::string_view word : words) EncodeWord(word, &ids);
    if (index < 0) break;
    ids.push_back(specials_[index].id);
    pos = special_pos + specials_[index].text.size();
  }
  return ids;
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  const auto emit = [&](int32_t id) {
    if (id >= 0) {
      out->push_back(id);
    } else if (v_.unk_id >= 0) {
      out->push_back(v_.unk_id);  // only for a vocabulary that lacks some single bytes
    }
  };
  if (v_.ignore_merges && word.size() > 1) {
    const auto it = token_ids_.find(utf8::ByteLevelAlphabet::Get().Encode(word));
    if (it != token_ids_.end() && v_.types[it->second] == TokenType::kNormal) {
      out->push_back(it->second);
      return;
    }
  }
  if (word.size() == 1) {
    emit(byte_ids_[static_cast<uint8_t>(word[0])]);
    return;
  }
  // Symbols form a doubly linked list over the word's bytes; merged-away ones are dead.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  const auto n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(
      std::greater<Candidate>(), std::move(storage));
  const auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    heap.push(
        {it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = symbols[c.left];
    // Stale: one side has merged since this pair was queued.
    if (left.id != c.left_id || left.next != c.right || symbols[c.right].id != c.right_id) {
      continue;
    }
    Symbol& right = symbols[c.right];
    left.id = c.result;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    right.id = kDeadSymbol;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) emit(symbols[i].id);
}

std::string BpeTokenizer::Decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) out.append(token_bytes_[id]);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildBpeTokenizer(BpeVocab vocab) {
  auto tokenizer = std::make_unique<BpeTokenizer>(std::move(vocab));
  if (absl::Status status = tokenizer->Init(); !status.ok()) return status;
  return tokenizer;
}

}  // namespace semshare::engine
