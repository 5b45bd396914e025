// Subcommands of the `semshare` CLI. Each takes the arguments after its name and returns the
// process exit code (0 ok, 1 runtime failure, 2 usage error).
#ifndef SEMSHARE_TOOLS_COMMANDS_H_
#define SEMSHARE_TOOLS_COMMANDS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"

namespace semshare::tools {

int GenerateCommand(int argc, char** argv);
int ForwardCommand(int argc, char** argv);
int BenchCommand(int argc, char** argv);
// `semshare client <method>` (tools/client_cmd.cc): one call to a semshare-server.
int ClientCommand(int argc, char** argv);
// `semshare loadgen` (tools/loadgen_cmd.cc): concurrent load with TTFT percentiles.
int LoadgenCommand(int argc, char** argv);
// `semshare bench --suite reuse` (tools/bench_reuse.cc); BenchCommand dispatches to it.
int BenchReuseCommand(int argc, char** argv);
// `semshare bench --suite store` (tools/bench_store.cc); BenchCommand dispatches to it.
int BenchStoreCommand(int argc, char** argv);
// `semshare bench --suite matcher` (tools/bench_matcher.cc): the CPU token matcher's cost.
int BenchMatcherCommand(int argc, char** argv);

// --model, else $SEMSHARE_MODEL, else the installed default model (engine/model/default_model.h);
// loads it and reports the load time on stderr.
absl::StatusOr<std::unique_ptr<engine::Model>> LoadModelForCli(const std::string& flag_value,
                                                               double* load_ms);
// The median of v (the mean of the middle two for an even count); NaN when v is empty.
double Median(std::vector<double> v);
// Sets the thread count of OpenBLAS and the CPU backend's pool (0 = leave the defaults).
void SetThreads(int64_t threads);

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_COMMANDS_H_
