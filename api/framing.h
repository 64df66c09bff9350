// Frames on the m2mvault socket: a 4-byte big-endian length, then that many
// bytes of one JSON object (UTF-8). See api/PROTOCOL.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace m2mvault::api {

inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr std::size_t kMaxFrameBytes = 1u << 20;  // 1 MiB

// Returns the 4-byte header followed by the serialized JSON.
std::string encode_frame(const nlohmann::json& message);

// Parses the 4-byte big-endian length header.
std::uint32_t decode_frame_length(const std::uint8_t header[4]) noexcept;

}  // namespace m2mvault::api
