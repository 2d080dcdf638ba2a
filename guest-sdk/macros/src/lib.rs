//! The `#[handler]` attribute of the kwasm guest SDK. Use it through
//! `kwasm_guest::handler`; its documentation lives there.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Path, ReturnType, Type, parse_macro_input};

/// Turns `fn(&Message) -> Result<T, Error>` (or, with `init = path`,
/// `fn(&Message, &State) -> Result<T, Error>`) into the plugin's export.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let init = match parse_init(attr.into()) {
        Ok(init) => init,
        Err(e) => return e.to_compile_error().into(),
    };
    match expand(&func, init.as_ref()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Parses the attribute's arguments: nothing, or `init = some::path`.
fn parse_init(attr: TokenStream2) -> syn::Result<Option<Path>> {
    if attr.is_empty() {
        return Ok(None);
    }
    let mut init = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("init") {
            init = Some(meta.value()?.parse::<Path>()?);
            Ok(())
        } else {
            Err(meta.error("unknown argument: the only one is `init = your_init_fn`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(init)
}

fn expand(func: &ItemFn, init: Option<&Path>) -> syn::Result<TokenStream2> {
    check_signature(func)?;
    let state_ty = state_type(func, init)?;
    let name = &func.sig.ident;
    let sdk = quote!(::kwasm_guest);
    let call = if func.sig.inputs.len() == 2 {
        quote!(#name(msg, state))
    } else {
        quote!(#name(msg))
    };
    let run_init = match init {
        Some(path) => quote!(#path),
        None => quote!(|_: &#sdk::Config| ::core::result::Result::Ok(())),
    };
    let native_refs = init.map(|p| quote!(let _ = #p;));
    Ok(quote! {
        #func

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static KWASM_STATE: ::std::cell::OnceCell<#state_ty> =
                    const { ::std::cell::OnceCell::new() };
            }
            struct KwasmPlugin;
            impl #sdk::bindings::exports::kwasm::plugin::handler::Guest for KwasmPlugin {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    KWASM_STATE.with(|slot| #sdk::__private::run_init(config, slot, #run_init))
                }
                fn handle_batch(
                    batch: #sdk::bindings::kwasm::plugin::types::Batch,
                ) -> #sdk::bindings::kwasm::plugin::types::BatchResult {
                    KWASM_STATE.with(|slot| {
                        let state = #sdk::__private::state(slot);
                        let _ = &state;
                        #sdk::__private::run_batch(batch, |msg| #call)
                    })
                }
            }
            #sdk::bindings::export_plugin!(KwasmPlugin with_types_in #sdk::bindings);
        };

        // Off wasm32 the export is compiled out; keep the functions "used" so
        // native unit-test builds stay warning-free.
        #[cfg(not(target_arch = "wasm32"))]
        #[allow(dead_code)]
        const _: () = {
            fn kwasm_native_refs() {
                let _ = #name;
                #native_refs
            }
        };
    })
}

/// The handler must be a plain synchronous function taking the message by
/// reference and returning a `Result`; say exactly what is wrong otherwise.
fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(t) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            t,
            "a kwasm handler cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a kwasm handler cannot be generic",
        ));
    }
    if sig.inputs.is_empty() || sig.inputs.len() > 2 {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "a kwasm handler takes `msg: &Message` (and, with `init = ...`, `state: &YourState`)",
        ));
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Typed(pat) if matches!(*pat.ty, Type::Reference(_)) => {}
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "expected a reference parameter such as `msg: &Message`",
                ));
            }
        }
    }
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "a kwasm handler returns `Result<T, kwasm_guest::Error>` where T is Output, Option<Output>, Vec<Output> or ()",
        ));
    }
    Ok(())
}

/// The type stored by init: the referent of the second parameter, or `()`.
fn state_type(func: &ItemFn, init: Option<&Path>) -> syn::Result<TokenStream2> {
    let second = func.sig.inputs.iter().nth(1);
    match (second, init) {
        (None, _) => Ok(quote!(())),
        (Some(FnArg::Typed(pat)), Some(_)) => match &*pat.ty {
            Type::Reference(r) => {
                let ty = &r.elem;
                Ok(quote!(#ty))
            }
            other => Err(syn::Error::new_spanned(other, "expected `&YourState`")),
        },
        (Some(arg), None) => Err(syn::Error::new(
            arg.span(),
            "a second parameter holds the init function's result: add `#[handler(init = your_init_fn)]`",
        )),
        (Some(FnArg::Receiver(r)), Some(_)) => Err(syn::Error::new_spanned(
            r,
            "a kwasm handler is a free function",
        )),
    }
}
