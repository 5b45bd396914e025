// `semshare`: the command-line front end; dispatches to a subcommand.
#include <csignal>
#include <cstdio>
#include <cstring>

#include "tools/commands.h"

int main(int argc, char** argv) {
  const char* usage =
      "usage: semshare <command> [flags]   (semshare <command> --help for its flags)\n\n"
      "commands:\n"
      "  generate   generate a completion for a prompt on the CPU backend\n"
      "  forward    run token ids through the model; print logits and greedy tokens (oracle)\n"
      "  bench      measure throughput (--suite forward | reuse | store | matcher | cuda)\n"
      "  client     call a semshare-server (generate, stream, tokenize, info, lookup, ...)\n"
      "  loadgen    drive a semshare-server with concurrent requests; TTFT percentiles\n";
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    std::fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // Writes to a closed socket (a Redis node gone during `bench --suite store`) fail with EPIPE
  // instead of killing the process.
  std::signal(SIGPIPE, SIG_IGN);
  const char* cmd = argv[1];
  if (std::strcmp(cmd, "generate") == 0)
    return semshare::tools::GenerateCommand(argc - 2, argv + 2);
  if (std::strcmp(cmd, "forward") == 0) return semshare::tools::ForwardCommand(argc - 2, argv + 2);
  if (std::strcmp(cmd, "bench") == 0) return semshare::tools::BenchCommand(argc - 2, argv + 2);
  if (std::strcmp(cmd, "client") == 0) return semshare::tools::ClientCommand(argc - 2, argv + 2);
  if (std::strcmp(cmd, "loadgen") == 0) {
    return semshare::tools::LoadgenCommand(argc - 2, argv + 2);
  }
  std::fprintf(stderr, "semshare: unknown command '%s'\n\n%s", cmd, usage);
  return 2;
}
