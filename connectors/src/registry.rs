//! The one list of connector folders. `sources/mod.rs` and `sinks/mod.rs`
//! each call [`connectors!`] with one line per folder; the line declares
//! the folder's module behind its cargo feature and registers its config
//! struct under the folder's name, which is its `type` in pipeline files.
//! See `connectors/README.md`.

/// Declares connector folders and the `TYPES` list of what they register.
///
/// ```ignore
/// crate::registry::connectors! {
///     parse_sink => SinkConfig;
///     #[cfg(feature = "files")] file::FileSinkConfig,
/// }
/// ```
/// declares `#[cfg(feature = "files")] pub mod file;` and registers
/// `type = "file"` read into `file::FileSinkConfig` (known as needing the
/// feature `files` when a build leaves it out).
macro_rules! connectors {
    (
        $parse:ident => $config:ident;
        $( #[cfg(feature = $feature:literal)] $module:ident :: $options:ident ),* $(,)?
    ) => {
        $(
            #[cfg(feature = $feature)]
            pub mod $module;
        )*

        /// Every type of this kind sluice knows, compiled in or not.
        pub static TYPES: &[sluice_engine::connector::Registered<
            sluice_engine::connector::$config,
        >] = &[
            $(
                sluice_engine::connector::Registered {
                    name: stringify!($module),
                    feature: $feature,
                    parse: {
                        #[cfg(feature = $feature)]
                        const PARSE: Option<
                            sluice_engine::connector::ParseFn<sluice_engine::connector::$config>,
                        > = Some(sluice_engine::connector::$parse::<$module::$options>);
                        #[cfg(not(feature = $feature))]
                        const PARSE: Option<
                            sluice_engine::connector::ParseFn<sluice_engine::connector::$config>,
                        > = None;
                        PARSE
                    },
                },
            )*
        ];
    };
}

pub(crate) use connectors;
