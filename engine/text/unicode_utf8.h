// UTF-8 helpers and the GPT-2 byte-level alphabet, shared by the BPE tokenizer and its
// streaming decoder.
//
// Byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM2) does not operate on bytes directly: every
// byte 0..255 is first mapped to a printable Unicode character (`bytes_to_unicode` in
// OpenAI's GPT-2 encoder.py): the 188 printable Latin-1 bytes map to themselves and the other
// 68 (control characters, space, DEL, NBSP, soft hyphen) to U+0100.. in byte order, so " " is
// "Ġ" (U+0120) and "\n" is "Ċ" (U+010A). Vocabulary strings are written in that alphabet.
// All functions here are pure and thread-safe.
#ifndef SEMSHARE_ENGINE_TEXT_UNICODE_UTF8_H_
#define SEMSHARE_ENGINE_TEXT_UNICODE_UTF8_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace semshare::engine::utf8 {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Outcome of decoding the sequence that starts at some position of a byte string.
enum class SeqStatus {
  kOk,          // a whole, well-formed character of `length` bytes
  kIncomplete,  // the `length` bytes up to the end are a valid prefix of a character
  kInvalid,     // ill-formed: `length` bytes (the maximal ill-formed subpart, >= 1) are bad
};
struct Seq {
  SeqStatus status;
  size_t length;
  uint32_t codepoint;  // valid only for kOk
};

// Decodes the character at s[pos] (pos < s.size()) by the rules of Unicode 15 table 3-7
// (no overlongs, no surrogates, nothing above U+10FFFF). The kInvalid lengths follow the
// "maximal subpart" practice, as Python's and Rust's lossy decoders do.
Seq DecodeAt(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of `cp` (<= U+10FFFF) to `out`.
void AppendCodepoint(uint32_t cp, std::string* out);

// True when `s` is entirely well-formed UTF-8.
bool IsValid(std::string_view s);

// `s` with every ill-formed subpart (including a truncated tail) replaced by U+FFFD.
std::string ToValidLossy(std::string_view s);

// The GPT-2 byte <-> character mapping.
class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& Get();

  // UTF-8 of the character that stands for byte `b` (1 or 2 bytes).
  std::string_view CharOf(uint8_t b) const { return {chars_[b].data(), lengths_[b]}; }
  // Byte that the code point stands for, or -1 when it is not in the alphabet.
  int ByteOf(uint32_t cp) const { return cp < byte_of_.size() ? byte_of_[cp] : -1; }

  // Each byte of `bytes` mapped to its character.
  std::string Encode(std::string_view bytes) const;
  // Inverse of Encode. Characters outside the alphabet (e.g. an added token stored as plain
  // text) are kept as their own UTF-8 bytes, so this never fails.
  std::string Decode(std::string_view text) const;

 private:
  ByteLevelAlphabet();
  std::array<std::array<char, 2>, 256> chars_{};
  std::array<uint8_t, 256> lengths_{};
  std::array<int16_t, 324> byte_of_{};  // indexed by code point; the alphabet ends at U+0143
};

}  // namespace semshare::engine::utf8

#endif  // SEMSHARE_ENGINE_TEXT_UNICODE_UTF8_H_
