// `semshare`: the command-line front end. Subcommands are added as they exist.
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr, "usage: semshare <generate> [flags]\n");
    return argc < 2 ? 2 : 0;
  }
  std::fprintf(stderr, "semshare: unknown command '%s'\n", argv[1]);
  return 2;
}
