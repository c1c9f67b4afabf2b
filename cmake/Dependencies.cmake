# All third-party lookups in one place. Every package comes from Debian
# (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(dnnl CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(OpenMP REQUIRED)
find_package(ICU REQUIRED COMPONENTS uc i18n)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
# Debian's libcpp-httplib-dev (the HTTP server, the HTTP load client): a compiled library
# whose header must see the feature macros it was built with, which its .pc carries.
pkg_check_modules(CPPHTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
find_package(prometheus-cpp CONFIG QUIET)
if(SLUICE_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(SLUICE_BUILD_BENCH)
  find_package(benchmark CONFIG QUIET)
endif()
