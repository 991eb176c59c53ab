// Package pb holds the protobuf messages of Espressif's protocomm and Wi-Fi
// provisioning protocols, generated from the .proto files beside it. The
// messages are wire-compatible with ESP-IDF's; only the package name differs.
package pb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative constants.proto sec0.proto sec1.proto sec2.proto session.proto wifi_constants.proto wifi_config.proto wifi_scan.proto wifi_ctrl.proto
