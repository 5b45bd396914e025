// Minimal flag parsing for `semshare <command> --flag value ...`. Hand-written rather than
// absl flags because absl flags are process-global and cannot spell the dashed names
// (--max-tokens) or give each subcommand its own set and help text.
#ifndef SEMSHARE_TOOLS_CLI_ARGS_H_
#define SEMSHARE_TOOLS_CLI_ARGS_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace semshare::tools {

struct FlagSpec {
  FlagSpec(std::string n, std::string h, bool b = false, bool r = false, std::string d = "")
      : name(std::move(n)),
        help(std::move(h)),
        is_bool(b),
        repeated(r),
        default_value(std::move(d)) {}
  std::string name;  // without dashes
  std::string help;
  bool is_bool = false;   // takes no value
  bool repeated = false;  // may appear several times
  std::string default_value;
};

class Args {
 public:
  // Parses argv (after the command name). InvalidArgument names an unknown flag or a missing
  // value.
  static absl::StatusOr<Args> Parse(const std::vector<FlagSpec>& specs, int argc, char** argv);
  static std::string Help(const std::string& usage, const std::vector<FlagSpec>& specs);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  bool Bool(const std::string& name) const { return Has(name); }
  std::string Str(const std::string& name) const;
  std::vector<std::string> All(const std::string& name) const;
  absl::StatusOr<int64_t> Int(const std::string& name) const;
  absl::StatusOr<double> Double(const std::string& name) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::map<std::string, std::string> defaults_;
};

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_CLI_ARGS_H_
