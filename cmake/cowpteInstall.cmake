# Install rules and the exported CMake package: find_package(cowpte CONFIG REQUIRED).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS cowpte EXPORT cowpteTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})  # includes: the target's $<INSTALL_INTERFACE>
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/cowpte DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT cowpteTargets NAMESPACE cowpte::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cowpte)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/cowpteConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cowpteConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cowpte)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cowpteConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cowpteConfig.cmake ${PROJECT_BINARY_DIR}/cowpteConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cowpte)
