#include "tools/cli_args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace semshare::tools {

absl::StatusOr<Args> Args::Parse(const std::vector<FlagSpec>& specs, int argc, char** argv) {
  Args args;
  std::map<std::string, const FlagSpec*> by_name;
  for (const FlagSpec& s : specs) {
    by_name[s.name] = &s;
    if (!s.default_value.empty()) args.defaults_[s.name] = s.default_value;
  }
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (it->second->is_bool) {
      if (has_value && value != "true" && value != "1") continue;
      value = "true";
    } else if (!has_value) {
      if (i + 1 >= argc)
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    auto& v = args.values_[name];
    if (!it->second->repeated) v.clear();
    v.push_back(value);
  }
  return args;
}

std::string Args::Help(const std::string& usage, const std::vector<FlagSpec>& specs) {
  std::string out = absl::StrCat("usage: ", usage, "\n\nflags:\n");
  for (const FlagSpec& s : specs) {
    std::string left = absl::StrCat("  --", s.name, s.is_bool ? "" : " VALUE");
    if (left.size() < 26) left.resize(26, ' ');
    absl::StrAppend(&out, left, " ", s.help);
    if (!s.default_value.empty()) absl::StrAppend(&out, " (default ", s.default_value, ")");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string Args::Str(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end() && !it->second.empty()) return it->second.back();
  auto d = defaults_.find(name);
  return d == defaults_.end() ? "" : d->second;
}

std::vector<std::string> Args::All(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<int64_t> Args::Int(const std::string& name) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Str(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be an integer, got '", Str(name), "'"));
  }
  return v;
}

absl::StatusOr<double> Args::Double(const std::string& name) const {
  double v = 0;
  if (!absl::SimpleAtod(Str(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be a number, got '", Str(name), "'"));
  }
  return v;
}

}  // namespace semshare::tools
