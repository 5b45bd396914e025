#include "engine/text/unicode_utf8.h"

namespace semshare::engine::utf8 {

Seq DecodeAt(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  if (b0 < 0x80) return {SeqStatus::kOk, 1, b0};
  size_t need;
  uint32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {SeqStatus::kInvalid, 1, 0};  // continuation byte, C0, C1 or F5..FF
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= s.size()) return {SeqStatus::kIncomplete, i, 0};
    const uint8_t b = byte(pos + i);
    const uint8_t min = i == 1 ? lo : 0x80;
    const uint8_t max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) return {SeqStatus::kInvalid, i, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {SeqStatus::kOk, need, cp};
}

void AppendCodepoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValid(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Seq seq = DecodeAt(s, pos);
    if (seq.status != SeqStatus::kOk) return false;
    pos += seq.length;
  }
  return true;
}

std::string ToValidLossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Seq seq = DecodeAt(s, pos);
    if (seq.status == SeqStatus::kOk) {
      out.append(s.substr(pos, seq.length));
    } else {
      out.append(kReplacementChar);
    }
    pos += seq.length;
  }
  return out;
}

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet* const kAlphabet = new ByteLevelAlphabet();
  return *kAlphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  byte_of_.fill(-1);
  uint32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : next_extra++;
    std::string encoded;
    AppendCodepoint(cp, &encoded);
    lengths_[b] = static_cast<uint8_t>(encoded.size());
    for (size_t i = 0; i < encoded.size(); ++i) chars_[b][i] = encoded[i];
    byte_of_[cp] = static_cast<int16_t>(b);
  }
}

std::string ByteLevelAlphabet::Encode(std::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out.append(CharOf(static_cast<uint8_t>(c)));
  return out;
}

std::string ByteLevelAlphabet::Decode(std::string_view text) const {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Seq seq = DecodeAt(text, pos);
    const int b = seq.status == SeqStatus::kOk ? ByteOf(seq.codepoint) : -1;
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(pos, seq.length));
    }
    pos += seq.length;
  }
  return out;
}

}  // namespace semshare::engine::utf8
